"""Atomic server checkpoints: one ``.npz`` holding every array plus a JSON metadata string.

Why one file: the global adapter, broadcast adapter, optimiser moments, last-changed versions, kept
broadcast deltas, client-version table, round number and journal row counts must be consistent with
each other. Writing them as
one file to a temporary name and ``os.replace``-ing it into place means a crash leaves either the
previous complete checkpoint or the new complete one, never a mix.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

CHECKPOINT_NAME = "checkpoint.npz"
FORMAT = 1
_META_KEY = "__meta__"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or from an incompatible run; the message says which."""


def save_checkpoint(folder: str | Path, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Path:
    """Write ``arrays`` + ``meta`` (JSON-serialisable) atomically to ``folder/checkpoint.npz``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if _META_KEY in arrays:
        raise CheckpointError(f"array name {_META_KEY!r} is reserved")
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    payload[_META_KEY] = np.frombuffer(json.dumps({"format": FORMAT, **meta}).encode(), dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(prefix=".ckpt-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **payload)
            fh.flush()
            os.fsync(fh.fileno())
        target = folder / CHECKPOINT_NAME
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load_checkpoint(folder: str | Path, with_arrays: bool = True) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint` (``with_arrays=False``: its metadata only,
    cheap enough to check a resume before a federation starts)."""
    path = Path(folder) / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path} (nothing to resume from)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: np.array(z[k]) for k in z.files if k != _META_KEY and with_arrays}
            meta = json.loads(bytes(z[_META_KEY]).decode())
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {meta.get('format')}, expected {FORMAT}")
    return arrays, meta


def has_checkpoint(folder: str | Path) -> bool:
    return (Path(folder) / CHECKPOINT_NAME).is_file()
