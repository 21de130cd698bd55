"""Key-value structure of a private context: profile lines in any key style, JSON and YAML objects.

Why hand-written: a user's profile is a handful of ``key: value`` items written however the user or
their app writes them (``Name: Maria Lopez``, ``home_city = Austin``, ``- **Employer**: ...``,
``Name: A; Location: B; Privacy_info: c; d``, a JSON or YAML object). JSON and YAML are parsed with
the standard library and PyYAML; the line forms are not a format any parser knows, so a regular
expression finds them. What a value *is* is decided by the detector (client/cogen/span_detector.py):
here only "this text is the value of that key" and where the keys are (keys are not private).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

import yaml

#: a key: up to 4 words of letters/digits/underscores/hyphens, optionally bulleted, bold or quoted;
#: then ``:`` or ``=`` (a time such as "2:40" has a digit before the colon, so it is no key)
KEY_RE = re.compile(r"""^(?P<lead>\s*(?:[-*•>]+\s*)?(?:\*\*|__|["'])?)
    (?P<key>[A-Za-z][A-Za-z0-9_'-]*(?:[ ][A-Za-z0-9_'-]+){0,3})
    (?:\*\*|__|["'])?\s*[:=]\s*(?P<value>.*)$""", re.X)
#: item separators inside one line ("Name: A; Location: B" or "Name: A / Location: B | ...")
ITEM_SEP_RE = re.compile(r"\s*;\s*|\s+[/|]\s+")
PRONOUNS = frozenset(("i", "we", "you", "he", "she", "they", "it", "me", "my", "our"))


@dataclass(frozen=True)
class Field:
    """One value of a key: ``value`` spans ``[start, end)`` of the context (-1 when parsed from JSON/YAML)."""

    key: str
    value: str
    start: int = -1
    end: int = -1


def _key_ok(key: str) -> bool:
    words = key.lower().replace("_", " ").split()
    return bool(words) and words[0] not in PRONOUNS and len(key) <= 40


def line_fields(text: str) -> tuple[list[Field], list[tuple[int, int]]]:
    """``key: value`` items of every line, and the char ranges of the keys (to keep them out of the
    free-text detectors). An item without a key after a keyed item of the same line continues that
    key's value ("Privacy_info: diabetic; divorced in 2019" -> two values of Privacy_info)."""
    fields: list[Field] = []
    keys: list[tuple[int, int]] = []
    pos = 0
    for line in text.splitlines(keepends=True):
        last_key: str | None = None
        cursor = 0
        body = line.rstrip("\r\n")
        items = []
        for m in ITEM_SEP_RE.finditer(body):
            items.append((cursor, m.start()))
            cursor = m.end()
        items.append((cursor, len(body)))
        for a, b in items:
            item = body[a:b]
            m = KEY_RE.match(item)
            if m and _key_ok(m.group("key")) and m.group("value").strip():
                last_key = m.group("key")
                keys.append((pos + a + m.start("key"), pos + a + m.start("value")))
                va = a + m.start("value")
                fields.append(Field(last_key, body[va:b].strip(), pos + va, pos + b))
            elif m and _key_ok(m.group("key")):  # "conditions:" opening a YAML list or block
                keys.append((pos + a + m.start("key"), pos + a + len(item)))
            elif last_key is not None and item.strip():
                fields.append(Field(last_key, item.strip(), pos + a, pos + b))
        pos += len(line)
    return fields, keys


def _walk(obj: object, key: str = "") -> Iterator[Field]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, str(k))
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v, key)
    elif isinstance(obj, str | int | float) and not isinstance(obj, bool) and str(obj).strip():
        yield Field(key, str(obj).strip())


def _json_objects(text: str) -> Iterator[object]:
    """Every JSON object or array that parses, scanning from each ``{``/``[`` (raw_decode stops at its end)."""
    dec = json.JSONDecoder()
    i = 0
    while i < len(text):
        j = min((k for k in (text.find("{", i), text.find("[", i)) if k >= 0), default=-1)
        if j < 0:
            return
        try:
            obj, end = dec.raw_decode(text, j)
        except json.JSONDecodeError:
            i = j + 1
            continue
        if isinstance(obj, dict | list) and obj:
            yield obj
        i = end


def object_fields(text: str) -> list[Field]:
    """Values of the JSON objects in ``text`` and of the text as a YAML mapping (when it is one)."""
    out: list[Field] = []
    for obj in _json_objects(text):
        out += list(_walk(obj))
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        doc = None
    if isinstance(doc, dict) and len(doc) >= 2:
        out += list(_walk(doc))
    return out
