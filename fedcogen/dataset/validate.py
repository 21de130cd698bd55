"""Validation of task files (the public `fedcogen eval` JSONL format): one validator for the project."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcogen.dataset.schema import PROFILES_FILE, DataValidationError, TaskRecord


def jsonl_lines(text: str) -> Iterator[tuple[int, Any, str | None]]:
    """``(line number, parsed object, None)`` per non-blank line, or ``(line number, None, reason)`` when a
    line is not JSON: callers collect every problem of a file instead of stopping at the first."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line), None
        except json.JSONDecodeError as exc:
            yield lineno, None, f"invalid JSON ({exc.msg} at column {exc.colno})"


def jsonl_file_lines(path: str | Path) -> Iterator[tuple[int, Any, str | None]]:
    """:func:`jsonl_lines` of a file, decoded line by line: a line that is not UTF-8 is a problem *of that
    line* (``(line number, None, reason)``), so one bad line does not reject the whole file and the
    caller's skip/reject policy applies to it like to any other invalid line. Lines end at ``\\n`` only
    (a JSON string may hold U+2028, which ``str.splitlines`` would split on)."""
    raw = Path(path).read_bytes()
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if lineno == 1 and line.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark some editors write
            line = line[3:]
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield lineno, None, f"not UTF-8 text ({exc.reason} at byte {exc.start} of the line)"
            continue
        for _, obj, error in jsonl_lines(text.rstrip("\r")):
            yield lineno, obj, error


@dataclass(frozen=True)
class FieldLimits:
    """The largest accepted size, in characters, of each text field of a task line.

    Why: an unbounded field is tokenised in full before the prompt budget cuts it; a 50 MB
    ``private_context`` made ``fedcogen eval`` peak at 4.5 GB. The defaults are far above real tasks
    (references ~150 tokens, the device prompt budget 3072 tokens ~ 12k characters, which
    ``fit_context`` fills from longer contexts) and far below what hurts. ``private_fact`` caps each item.
    """

    instruction: int = 20_000
    private_context: int = 200_000
    reference: int = 50_000
    private_fact: int = 2_000

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if getattr(self, f.name) < 1:
                raise ValueError(f"size limit of field '{f.name}' must be >= 1 character, got {getattr(self, f.name)}")

    @classmethod
    def from_specs(cls, specs: Sequence[str]) -> FieldLimits:
        """Limits from ``FIELD=CHARS`` strings (the ``--max-chars`` flag); other fields keep their defaults."""
        names = [f.name for f in dataclasses.fields(cls)]
        values: dict[str, int] = {}
        for spec in specs:
            name, sep, number = spec.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in names:
                raise ValueError(f"size limit '{spec}': expected FIELD=CHARS with FIELD one of {', '.join(names)}")
            try:
                values[name] = int(number)
            except ValueError:
                raise ValueError(f"size limit '{spec}': CHARS must be a whole number of characters") from None
        return cls(**values)


def check_sizes(obj: Any, limits: FieldLimits) -> list[tuple[str, str]]:
    """``(field, reason)`` for every text field of a task object longer than its limit."""
    if not isinstance(obj, dict):
        return []
    problems = []
    for name in ("instruction", "private_context", "reference"):
        value = obj.get(name)
        cap = getattr(limits, name)
        if isinstance(value, str) and len(value) > cap:
            problems.append((name, f"{len(value):,} characters, over the limit of {cap:,} "
                                   f"(raise it with --max-chars {name}=N)"))
    facts = obj.get("private_facts")
    if isinstance(facts, list):
        for i, x in enumerate(facts):
            if isinstance(x, str) and len(x) > limits.private_fact:
                problems.append(("private_facts", f"item {i} is {len(x):,} characters, over the limit of "
                                                  f"{limits.private_fact:,} (raise it with --max-chars private_fact=N)"))
                break
    return problems


_REQUIRED_STR = ("user_id", "instruction", "private_context", "reference")
_OPTIONAL_STR = ("task_id", "task_type", "split", "scenario")


def _check_task(obj: Any, known_users: Collection[str] | None) -> list[tuple[str, str]]:
    if not isinstance(obj, dict):
        return [("-", f"expected a JSON object, got {type(obj).__name__}")]
    problems = []
    for name in _REQUIRED_STR:
        if name not in obj:
            problems.append((name, "missing"))
        elif not isinstance(obj[name], str):
            problems.append((name, f"expected a string, got {type(obj[name]).__name__}"))
        elif not obj[name].strip():
            problems.append((name, "empty"))
    for name in _OPTIONAL_STR:
        if name in obj and not isinstance(obj[name], str):
            problems.append((name, f"expected a string, got {type(obj[name]).__name__}"))
    if "private_facts" in obj:
        pf = obj["private_facts"]
        if not isinstance(pf, list):
            problems.append(("private_facts", f"expected a list of strings, got {type(pf).__name__}"))
        else:
            for i, x in enumerate(pf):
                if not isinstance(x, str):
                    problems.append(("private_facts", f"expected a list of strings; item {i} is {type(x).__name__}"))
                    break
                if not x.strip():
                    problems.append(("private_facts", f"expected a list of strings; item {i} is empty"))
                    break
    if known_users is not None and isinstance(obj.get("user_id"), str) and obj["user_id"].strip():
        if obj["user_id"] not in known_users:
            problems.append(("user_id", f"unknown user '{obj['user_id']}' (not in the profiles)"))
    return problems


def _users_next_to(path: Path) -> set[str] | None:
    prof = path.parent / PROFILES_FILE
    if not prof.is_file() or path.name == PROFILES_FILE:
        return None
    users = set()
    for line in prof.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                users.add(str(json.loads(line)["user_id"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                return None
    return users


def validate_task_file(path: str | Path, strict: bool = True, known_users: Collection[str] | None = None,
                       limits: FieldLimits | None = None,
                       ) -> list[TaskRecord] | tuple[list[TaskRecord], list[tuple[int, str, str]]]:
    """Parse and check a task JSONL file (generated splits or a hand-written ``fedcogen eval`` file).

    Checks every line: valid JSON object; ``user_id``, ``instruction``, ``private_context``,
    ``reference`` present, strings, non-empty; optional ``task_id``/``task_type``/``split`` strings;
    ``private_facts`` a list of strings; ``task_id`` unique; ``user_id`` known when a profile set is
    known (``known_users``, or a ``profiles.jsonl`` next to the file); text fields within ``limits``
    (default :class:`FieldLimits`); every line UTF-8 (a line that is not is a problem of that line, with
    its number). Blank lines are ignored.

    ``strict=True``: returns the records or raises :class:`DataValidationError` naming file, line and
    field of the first problem (all problems in ``.problems``). ``strict=False``: returns
    ``(valid_records, [(line, field, reason), ...])``.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"task file not found: {p}")
    if known_users is None:
        known_users = _users_next_to(p)
    records: list[TaskRecord] = []
    problems: list[tuple[int, str, str]] = []
    seen_ids: dict[str, int] = {}
    limits = limits or FieldLimits()
    for lineno, obj, error in jsonl_file_lines(p):
        if error:
            problems.append((lineno, "-", error))
            continue
        bad = _check_task(obj, known_users) + check_sizes(obj, limits)
        if bad:
            problems.extend((lineno, f, r) for f, r in bad)
            continue
        tid = obj.get("task_id") or f"{p.stem}-{lineno}"
        if tid in seen_ids:
            problems.append((lineno, "task_id", f"duplicate '{tid}' (first on line {seen_ids[tid]})"))
            continue
        seen_ids[tid] = lineno
        records.append(TaskRecord(
            user_id=obj["user_id"], instruction=obj["instruction"], private_context=obj["private_context"],
            reference=obj["reference"], task_id=tid, task_type=obj.get("task_type", ""),
            private_facts=list(obj.get("private_facts", [])), split=obj.get("split", ""),
            scenario=obj.get("scenario", ""),
        ))
    if not records and not problems:
        problems.append((0, "-", "file has no task records"))
    if strict:
        if problems:
            raise DataValidationError(p, problems)
        return records
    return records, problems
