"""Reading an experiment's ``--config`` file: TOML or JSON, optionally inside a named table.

Why one reader: ``fedcogen simulate --config`` and ``fedcogen privacy run --config`` (and any
experiment that takes a config file) accept the same two formats and the same "missing file" and
"not a table" errors; what the keys mean stays with each experiment's own config class.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any


def read_config_file(path: str | Path, table: str | None = None) -> dict[str, Any]:
    """The settings in ``path`` (``.json``, else TOML); with ``table``, that table's when the file has one
    (``[simulation]``), else the whole file. A missing file or a malformed one is an error naming it."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {p} does not exist")
    try:
        data = json.loads(p.read_text()) if p.suffix == ".json" else tomllib.loads(p.read_text())
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"config file {p} is not valid {'JSON' if p.suffix == '.json' else 'TOML'}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"config file {p} must hold a table of settings, not {type(data).__name__}")
    if table is not None and isinstance(data.get(table), dict):
        return dict(data[table])
    return data
