"""Strict JSON for every result file fedcogen writes: ``null`` where a number is not finite.

Why: Python's ``json`` writes ``NaN`` and ``Infinity`` by default, which is not JSON (RFC 8259); strict
parsers (``jq``, JavaScript's ``JSON.parse``, Go, Rust's serde_json) reject the whole file. A metric that
was not measured (an empty bootstrap, a loss of a round without evaluation) is ``None`` in the file, and
``allow_nan=False`` makes any value that slips past the conversion an error at write time instead of a
broken file. Numpy scalars and arrays are converted too (results often hold them).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def finite(obj: Any, default: Callable[[Any], Any] | None = None) -> Any:
    """``obj`` with every non-finite float replaced by ``None``, tuples as lists, numpy values as Python ones.

    ``default`` converts objects JSON does not know (as ``json.dumps``'s ``default``); its result is
    converted in turn. Without it such objects are left for ``json.dumps`` to reject.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str | int | bool):
        return obj
    if isinstance(obj, Mapping):
        return {k: finite(v, default) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v, default) for v in obj]
    tolist = getattr(obj, "tolist", None)  # numpy scalars and arrays (without importing numpy here)
    if callable(tolist) and hasattr(obj, "dtype"):
        return finite(tolist(), default)
    if default is not None:
        return finite(default(obj), None)
    return obj


def dumps(obj: Any, *, indent: int | None = 1, default: Callable[[Any], Any] | None = None, **kwargs: Any) -> str:
    """Strict JSON text of ``obj`` (non-finite floats become ``null``; see :func:`finite`)."""
    return json.dumps(finite(obj, default), indent=indent, allow_nan=False, **kwargs)


def write(path: str | Path, obj: Any, *, indent: int | None = 1, default: Callable[[Any], Any] | None = None,
          **kwargs: Any) -> Path:
    """Write ``obj`` as strict JSON to ``path`` (creating its folder, ending with a newline); returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dumps(obj, indent=indent, default=default, **kwargs) + "\n", encoding="utf-8")
    return out
