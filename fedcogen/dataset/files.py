"""Writing and loading a federation folder (manifest with sha256 per file, JSONL records)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import Any

from fedcogen.dataset.canaries import CANARY_PLANTING
from fedcogen.dataset.schema import (
    CANARIES_FILE,
    CANARY_ALPHABETS,
    CANARY_PATTERN,
    CANARY_PREFIXES,
    CANARY_SPACE_SIZE,
    FORMAT_VERSION,
    GENERATOR,
    HISTORY_FILE,
    KIND_LABELS,
    MANIFEST_FILE,
    PROFILES_FILE,
    SPLITS,
    TASK_FILES,
    TASK_KINDS,
    DataValidationError,
    Federation,
    FederationConfig,
    HistoryText,
    TaskRecord,
    UserProfile,
    user_ids,
)
from fedcogen.dataset.validate import jsonl_file_lines, validate_task_file


# --------------------------------------------------------------------------- writing / loading
def _jsonl(records: Iterable[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def _counts(fed: Federation) -> dict[str, Any]:
    def by_kind(items: Iterable[str]) -> dict[str, int]:
        out = dict.fromkeys(TASK_KINDS, 0)
        for k in items:
            out[k] = out.get(k, 0) + 1
        out["total"] = sum(out.values())
        return out

    return {
        "users": len(fed.profiles),
        "history": by_kind(h.kind for h in fed.history),
        "tasks": {s: by_kind(t.task_type for t in fed.tasks[s]) for s in SPLITS},
        "canaries": sum(len(v) for v in fed.canaries.values()),
    }


def _canary_doc(fed: Federation) -> dict[str, Any]:
    return {
        "canaries": fed.canaries,
        "planted_in": fed.planted_in,
        "repeats": fed.config.canary_repeats,
        "format": {
            "shape": f"<prefix> <secret>, secret pattern {CANARY_PATTERN}",
            "pattern": CANARY_PATTERN,
            "alphabets": CANARY_ALPHABETS,
            "prefixes": list(CANARY_PREFIXES),
            "space_size": CANARY_SPACE_SIZE,
            "planted_as": CANARY_PLANTING.replace("{canary}", "<canary>"),
            "alternatives": "fedcogen.dataset.random_canary_like(canary, rng)",
        },
    }


def federation_files(fed: Federation) -> dict[str, bytes]:
    """The bytes of every data file (manifest excluded), keyed by relative path."""
    files = {
        # "extra" only where a profile has extra facts: basic federations keep their bytes from before it existed
        PROFILES_FILE: _jsonl({k: v for k, v in asdict(p).items() if k != "extra" or v} for p in fed.profiles),
        HISTORY_FILE: _jsonl(asdict(h) for h in fed.history),
        **{TASK_FILES[s]: _jsonl(t.to_json() for t in fed.tasks[s]) for s in SPLITS},
        CANARIES_FILE: (json.dumps(_canary_doc(fed), sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode(),
    }
    return files


def write_federation(fed: Federation, out_dir: str | Path) -> Path:
    """Write all files plus ``manifest.json`` (sha256 of each) into ``out_dir``; returns the folder.

    Existing files of the same names are replaced; other files in the folder are left alone (the
    CLI refuses non-empty folders unless ``--force``). The manifest is written last, so a folder with
    a manifest is complete.
    """
    out = Path(out_dir)
    (out / "private").mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST_FILE
    if manifest_path.exists():
        manifest_path.unlink()
    files = federation_files(fed)
    meta = {}
    for rel, data in files.items():
        (out / rel).write_bytes(data)
        records = data.count(b"\n") if rel.endswith(".jsonl") else None
        meta[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "records": records}
    manifest = {
        "format_version": FORMAT_VERSION,
        "generator": GENERATOR,
        "seed": fed.config.seed,
        "n_users": fed.config.n_users,
        "config": asdict(fed.config),
        "user_ids": user_ids(fed),
        "counts": _counts(fed),
        "files": meta,
        "task_kinds": {k: KIND_LABELS[k] for k in KIND_LABELS
                       if k in TASK_KINDS or any(t.task_type == k for s in SPLITS for t in fed.tasks[s])},
    }
    manifest_path.write_text(json.dumps(manifest, sort_keys=True, indent=1) + "\n", encoding="utf-8")
    return out


def _read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    rows = []
    problems: list[tuple[int, str, str]] = []
    for lineno, obj, error in jsonl_file_lines(path):
        if error:
            problems.append((lineno, "-", error))
            continue
        if not isinstance(obj, dict):
            problems.append((lineno, "-", "expected a JSON object"))
            continue
        for name in required:
            if name not in obj:
                problems.append((lineno, name, "missing"))
        rows.append(obj)
    if problems:
        raise DataValidationError(path, problems)
    return rows


def load_federation(folder: str | Path) -> Federation:
    """Load a folder written by :func:`write_federation`, validating every file.

    Checks the manifest's format version, every file's sha256 (a changed file is reported by name),
    each record's fields and types, that user ids match the profiles, and the manifest counts.
    """
    root = Path(folder)
    mpath = root / MANIFEST_FILE
    if not mpath.is_file():
        raise FileNotFoundError(f"{root} has no {MANIFEST_FILE}: not a federation folder (run `fedcogen data generate`)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataValidationError(mpath, [(exc.lineno, "-", f"invalid JSON ({exc.msg})")]) from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataValidationError(mpath, [(0, "format_version",
                                           f"{manifest.get('format_version')!r} is not supported (expected {FORMAT_VERSION})")])
    for rel, meta in manifest.get("files", {}).items():
        fpath = root / rel
        if not fpath.is_file():
            raise FileNotFoundError(f"{fpath} listed in {MANIFEST_FILE} is missing")
        digest = hashlib.sha256(fpath.read_bytes()).hexdigest()
        if digest != meta.get("sha256"):
            raise DataValidationError(fpath, [(0, "sha256", "content differs from the manifest (file changed after generation)")])
    try:
        cfg = FederationConfig(**manifest["config"])
    except (KeyError, TypeError) as exc:
        raise DataValidationError(mpath, [(0, "config", f"invalid ({exc})")]) from None

    profiles = []
    ppath = root / PROFILES_FILE
    required = tuple(f.name for f in fields(UserProfile) if f.default is MISSING and f.default_factory is MISSING)
    for i, obj in enumerate(_read_jsonl(ppath, required), start=1):
        if not isinstance(obj.get("private_values"), list):
            raise DataValidationError(ppath, [(i, "private_values", "expected a list of strings")])
        profiles.append(UserProfile.from_json(obj))
    known = {p.user_id for p in profiles}
    if len(known) != len(profiles):
        raise DataValidationError(ppath, [(0, "user_id", "duplicate user ids")])

    hpath = root / HISTORY_FILE
    history = []
    for i, obj in enumerate(_read_jsonl(hpath, ("user_id", "text_id", "kind", "text")), start=1):
        if obj["user_id"] not in known:
            raise DataValidationError(hpath, [(i, "user_id", f"unknown user '{obj['user_id']}'")])
        if obj["kind"] not in KIND_LABELS:
            raise DataValidationError(hpath, [(i, "kind", f"unknown kind '{obj['kind']}'")])
        if not isinstance(obj["text"], str) or not obj["text"].strip():
            raise DataValidationError(hpath, [(i, "text", "expected a non-empty string")])
        history.append(HistoryText(obj["user_id"], obj["text_id"], obj["kind"], obj["text"]))

    tasks: dict[str, list[TaskRecord]] = {}
    for split in SPLITS:
        tpath = root / TASK_FILES[split]
        recs = validate_task_file(tpath, strict=True, known_users=known) if tpath.stat().st_size else []
        tasks[split] = list(recs)  # type: ignore[arg-type]

    cpath = root / CANARIES_FILE
    try:
        cdoc = json.loads(cpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataValidationError(cpath, [(exc.lineno, "-", f"invalid JSON ({exc.msg})")]) from None
    canaries = cdoc.get("canaries")
    if not isinstance(canaries, dict) or not all(
            isinstance(v, list) and all(isinstance(c, str) for c in v) for v in canaries.values()):
        raise DataValidationError(cpath, [(0, "canaries", "expected {user_id: [canary, ...]}")])
    unknown = sorted(set(canaries) - known)
    if unknown:
        raise DataValidationError(cpath, [(0, "canaries", f"unknown user '{unknown[0]}'")])

    fed = Federation(config=cfg, profiles=profiles, history=history, tasks=tasks, canaries=canaries,
                     planted_in=cdoc.get("planted_in", {}))
    counts = manifest.get("counts")
    if counts != _counts(fed):
        raise DataValidationError(mpath, [(0, "counts", "record counts differ from the files")])
    return fed
