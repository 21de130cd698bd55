"""Where a result came from: the commit of the source tree, the settings, the seeds, the package
versions and the machine, as one JSON-able record every result file carries.

Why: a figure that cannot be traced to the code that made it cannot be checked, and a benchmark that
reads back finished runs (``fedcogen bench comm --reuse``, ``fedcogen privacy scale``) must not mix
runs made by different code or settings into one table. :func:`provenance` makes the record;
:func:`check_reusable` is the one rule every reuse of a finished run goes through.

The rule, decided once here:

* the recorded commit and the current one must both be known and equal, and neither tree dirty
  (uncommitted edits mean the commit does not say what code ran);
* the settings and the seeds must be equal, except settings the caller names in ``ignore`` (paths a run resolves, the
  ``resume`` flag);
* when a commit is ``"unknown"`` (not a git checkout: an installed wheel, the FAB copy ``flwr run``
  runs a ServerApp from, git missing), the code is the same only if both records hold the same digest
  of the source files (:func:`source_digest`); otherwise reuse is refused too, unless the caller passes
  ``force=True`` (``fedcogen bench comm --force-reuse``); a forced reuse still reports what differs
  (the caller prints it), it only does not raise. ``fedcogen privacy scale`` has no force: a run it
  refuses is deleted or run again in another ``--out-dir``.

Resuming an *interrupted* run (``resume = true`` after a crash) is not a reuse and is not checked here:
the checkpoint's settings fingerprint guards it (:mod:`fedcogen.server.fl.fl_state`), and its
``metrics.json`` records the code that finished it. ``fedcogen privacy scale`` resumes *finished* runs
to read them back, so it calls :func:`check_reusable` first.

Package versions come from the installed distributions' metadata (``importlib.metadata``), not from
importing torch & co: making the record stays cheap (three ``git`` calls with a short timeout and a
hash of ~1 MB of source, well under 0.1 s).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from fedcogen import SUBPACKAGE_FOLDERS, source_root

UNKNOWN = "unknown"
# run-config keys that say where a run lives or how it was started, not what it computes: a finished
# run read back from another folder path, or resumed, is still the same run (a test keeps them FLSettings keys)
RUN_LOCATION_KEYS = ("out_dir", "data_dir", "client_state_dir", "resume", "overwrite")  # where and how, not what
PACKAGES = ("fedcogen", "torch", "flwr", "transformers", "peft", "numpy", "grpcio")
GIT_TIMEOUT_S = 5.0
MAX_DIRTY_PATHS = 20  # enough to name what was edited; a huge list would bloat every result file


class ReuseRefused(ValueError):
    """A finished run may not be reused: made by other code or settings; the message names the difference.

    A ValueError: the output folder holds a run that does not fit the request, which the CLI reports as
    one error line (exit 2) instead of a traceback."""


def _git(root: Path, *args: str) -> str | None:
    """``git -C root ARGS`` stdout, or None when git is missing, slow or fails (never raises)."""
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def source_digest(package_dir: Path | None = None) -> str | None:
    """sha256 over the package's Python files, each named as installed (``fedcogen/client/x.py``), so
    a source tree, a Flower FAB and a wheel of the same code agree. Only ``.py``: a FAB leaves out the
    ``.proto`` (what runs is its generated ``*_pb2.py``, which is included).

    Why beside the commit: a ServerApp started by ``flwr run`` runs from the FAB, a copy of the project
    without ``.git``, so its commit is unknown; the digest still tells whether it was this code.
    """
    pkg = Path(package_dir) if package_dir is not None else Path(__file__).resolve().parent
    root = source_root(pkg)
    folders = {"fedcogen": pkg, **{f"fedcogen/{n}": (root or pkg) / n for n in SUBPACKAGE_FOLDERS}}
    files: dict[str, Path] = {}
    for label, folder in folders.items():
        for path in folder.rglob("*"):
            rel = path.relative_to(folder)
            if path.suffix != ".py" or "__pycache__" in rel.parts:
                continue
            if label == "fedcogen" and rel.parts[0] in SUBPACKAGE_FOLDERS:
                continue  # a wheel's subpackages, taken from their own folder above
            files[f"{label}/{rel.as_posix()}"] = path
    if not files:
        return None
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name].read_bytes()).digest())
    return h.hexdigest()


def code_state(root: Path | None = None) -> dict[str, Any]:
    """``{"commit", "dirty", "dirty_paths", "source_root", "source_digest"}`` of the source tree at ``root``.

    ``root`` defaults to the tree this package was imported from. Not a git checkout, or a checkout
    of some *other* repository that merely contains the files (a virtualenv inside a project), gives
    ``commit = "unknown"`` and ``dirty = None``: the commit cannot be named, which is said, not guessed.
    The digest (:func:`source_digest`) is of the code this process imported.
    """
    root = Path(root) if root is not None else source_root()
    unknown = {"commit": UNKNOWN, "dirty": None, "dirty_paths": [], "source_root": str(root) if root else None,
               "source_digest": source_digest()}
    if root is None:
        return unknown
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top.strip()).resolve() != Path(root).resolve():
        return unknown
    head = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain")
    if head is None or status is None:
        return unknown
    paths = [line[3:] for line in status.splitlines() if line.strip()]
    return {**unknown, "commit": head.strip(), "dirty": bool(paths), "dirty_paths": paths[:MAX_DIRTY_PATHS]}


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (None if not installed) plus ``python``."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["python"] = platform.python_version()
    return out


def machine() -> dict[str, Any]:
    """Cores, load average, total memory and platform: what any timing in the result must be read with."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        mem = None
    return {"cores": os.cpu_count(), "load_average": load, "memory_bytes": mem,
            "platform": platform.platform()}


def _plain(value: Any) -> Any:
    """The value as it will read back from the JSON file (tuples -> lists, Paths -> str), so a record
    compares equal to itself after a round trip."""
    return json.loads(json.dumps(value, default=str))


def provenance(settings: Mapping[str, Any] | None = None, seeds: Mapping[str, Any] | None = None,
               root: Path | None = None, started: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The record a result JSON carries under ``"provenance"``: code, command, settings, seeds, versions, machine.

    ``started``: the :func:`code_state` taken when a long run began. Why: the code that ran is the code the
    process imported at its start; a commit made while it ran would otherwise be recorded as the run's. The
    record then names the code at the start, and ``code_at_write`` plus ``code_changed_during_run`` say when
    the tree moved on before the result was written (reuse is refused on the starting code's commit).
    """
    now = code_state(root)
    record = {"code": dict(started) if started is not None else now, "command": command_line(),
              "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "settings": _plain(dict(settings or {})), "seeds": _plain(dict(seeds or {})),
              "packages": package_versions(), "machine": machine()}
    if started is not None:
        keys = ("commit", "dirty", "source_digest")
        record["code_changed_during_run"] = any(started.get(k) != now.get(k) for k in keys)
        if record["code_changed_during_run"]:
            record["code_at_write"] = now
    return record


def command_line(argv: list[str] | None = None) -> str:
    """The command that made a result, as a user would type it again (``fedcogen ...`` for the CLI)."""
    argv = list(sys.argv if argv is None else argv)
    if argv and Path(argv[0]).name == "fedcogen":
        argv[0] = "fedcogen"
    return shlex.join(argv)


def reuse_problems(old: Mapping[str, Any] | None, new: Mapping[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """Every reason the run recorded by ``old`` is not the run ``new`` would make (empty: reusable).

    ``old`` is the ``"provenance"`` record of the finished run (None: it has none, e.g. made before
    records existed); ``ignore`` names settings allowed to differ.
    """
    if not old:
        return ["the finished run has no provenance record (made before records existed, or not by fedcogen)"]
    problems = []
    was, now = old.get("code") or {}, new.get("code") or {}
    was_c, now_c = was.get("commit", UNKNOWN), now.get("commit", UNKNOWN)
    same_digest = was.get("source_digest") is not None and was.get("source_digest") == now.get("source_digest")
    if UNKNOWN in (was_c, now_c):
        if not same_digest:  # e.g. a run of the FAB copy `flwr run` made: same code if the digests agree
            which = " and ".join(n for n, c in (("the finished run's", was_c), ("the current", now_c))
                                 if c == UNKNOWN)
            problems.append(f"commit unknown for {which} code (not a git checkout) and the source digests "
                            "differ or are missing, so the code cannot be compared")
    elif was_c != now_c:
        problems.append(f"made by commit {was_c[:12]}, the current code is commit {now_c[:12]}")
    for label, state in (("the finished run was made from", was), ("the current tree is", now)):
        if state.get("dirty"):
            shown = ", ".join(state.get("dirty_paths") or [])
            problems.append(f"{label} a dirty tree (uncommitted changes: {shown or '?'})")
    skip = set(ignore)
    a, b = _plain(old.get("settings") or {}), _plain(new.get("settings") or {})
    for key in sorted((set(a) | set(b)) - skip):
        if key not in a:
            problems.append(f"setting {key!r} = {b[key]!r} is new (the finished run has no such setting)")
        elif key not in b:
            problems.append(f"setting {key!r} = {a[key]!r} in the finished run no longer exists")
        elif a[key] != b[key]:
            problems.append(f"setting {key!r}: finished run {a[key]!r}, now {b[key]!r}")
    sa, sb = _plain(old.get("seeds") or {}), _plain(new.get("seeds") or {})
    if sa != sb:
        problems.append(f"seeds differ: finished run {sa}, now {sb}")
    return problems


def check_reusable(old: Mapping[str, Any] | None, new: Mapping[str, Any], *, ignore: Iterable[str] = (),
                   force: bool = False, what: str = "the finished run",
                   hint: str = "delete it or use another output folder to run it again") -> list[str]:
    """Raise :class:`ReuseRefused` naming every difference unless the run recorded by ``old`` is the
    run ``new`` would make; with ``force`` return the differences instead (the caller reports them).
    ``hint`` tells the user what to do instead (the caller knows its flags)."""
    problems = reuse_problems(old, new, ignore)
    if problems and not force:
        raise ReuseRefused(f"refusing to reuse {what}: " + "; ".join(problems) + f". To go on: {hint}.")
    return problems


def recorded(result_file: str | Path) -> dict[str, Any] | None:
    """The ``"provenance"`` record of a result JSON file; None when the file, or its record, is missing."""
    try:
        data = json.loads(Path(result_file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    record = data.get("provenance") if isinstance(data, dict) else None
    return record if isinstance(record, dict) else None


__all__ = ["UNKNOWN", "PACKAGES", "RUN_LOCATION_KEYS", "recorded", "ReuseRefused", "code_state", "source_digest", "package_versions", "machine", "provenance",
           "reuse_problems", "check_reusable"]
