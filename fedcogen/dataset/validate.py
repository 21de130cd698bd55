"""Validation of task files (the public `fedcogen eval` JSONL format): one validator for the project."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator
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
                       ) -> list[TaskRecord] | tuple[list[TaskRecord], list[tuple[int, str, str]]]:
    """Parse and check a task JSONL file (generated splits or a hand-written ``fedcogen eval`` file).

    Checks every line: valid JSON object; ``user_id``, ``instruction``, ``private_context``,
    ``reference`` present, strings, non-empty; optional ``task_id``/``task_type``/``split`` strings;
    ``private_facts`` a list of strings; ``task_id`` unique; ``user_id`` known when a profile set is
    known (``known_users``, or a ``profiles.jsonl`` next to the file). Blank lines are ignored.

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
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataValidationError(p, [(0, "-", f"not UTF-8 text ({exc.reason})")]) from None
    for lineno, obj, error in jsonl_lines(text):
        if error:
            problems.append((lineno, "-", error))
            continue
        bad = _check_task(obj, known_users)
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
