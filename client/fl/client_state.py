"""A federated client's own state between rounds: error-feedback residuals and broadcast copies.

Why on disk, loaded on demand: a simulation process serves hundreds or thousands of virtual
clients. Flower keeps every node's ``context.state`` in memory for the whole run and ships it with
every message, so four adapter-sized arrays per client there would grow the process with the
number of clients. With ``client_state_dir`` set (the simulation always sets it) the state lives
only in the client's own folder and is read for the one message that needs it; without it (a
SuperNode that configured no folder) it stays in ``context.state``.

Two versions of each are kept: a crash after a client trained but before the server committed the
round leaves the client one version ahead of the server's table (see :func:`ClientState.prune`).
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context

from fedcogen.run_config import FLSettings

STATE_KEY = "fedcogen-client"
KEEP_VERSIONS = 2


@dataclass
class ClientState:
    """Residual by round it was produced in, broadcast copies by version."""

    residuals: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    copies: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)

    def residual_before(self, server_round: int) -> dict[str, np.ndarray] | None:
        """Latest residual produced strictly before ``server_round`` (a re-run round ignores its own)."""
        older = [r for r in self.residuals if r < server_round]
        return self.residuals[max(older)] if older else None

    def forget_newer(self, version: int) -> None:
        """Drop what this run cannot have produced yet, given a patch to broadcast ``version``: copies of
        later versions, residuals of rounds after ``version + 1`` (the round training on ``version``).
        Such entries are another run's, left in a reused state folder; kept, :meth:`prune` would keep
        them and drop this run's."""
        for table, newest in ((self.copies, version), (self.residuals, version + 1)):
            for key in [k for k in table if k > newest]:
                del table[key]

    def prune(self) -> None:
        for table in (self.residuals, self.copies):
            for key in sorted(table)[:-KEEP_VERSIONS]:
                del table[key]

    def to_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {}
        for r, tensors in self.residuals.items():
            arrays.update({f"res/{r}/{k}": v for k, v in tensors.items()})
        for v, tensors in self.copies.items():
            arrays.update({f"copy/{v}/{k}": a for k, a in tensors.items()})
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ClientState:
        state = cls()
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            for key in z.files:
                kind, num, name = key.split("/", 2)
                table = state.residuals if kind == "res" else state.copies
                table.setdefault(int(num), {})[name] = np.array(z[key], dtype=np.float32)
        return state


def state_file(settings: FLSettings, client_id: str) -> Path | None:
    if not settings.client_state_dir:
        return None
    return Path(settings.client_state_dir) / client_id / "client_state.npz"


def load_state(context: Context, settings: FLSettings, client_id: str) -> ClientState:
    """The client's folder when ``client_state_dir`` is set, else ``context.state``; empty if neither has it."""
    path = state_file(settings, client_id)
    if path is not None:
        return ClientState.from_bytes(path.read_bytes()) if path.is_file() else ClientState()
    rec = context.state.config_records.get(STATE_KEY) if STATE_KEY in context.state else None
    if rec is not None and rec.get("client_id") == client_id:
        return ClientState.from_bytes(bytes(rec["npz"]))
    return ClientState()


def save_state(context: Context, settings: FLSettings, client_id: str, state: ClientState) -> None:
    """Prune to the kept versions and write atomically to the folder (or into ``context.state``)."""
    state.prune()
    data = state.to_bytes()
    path = state_file(settings, client_id)
    if path is None:
        context.state[STATE_KEY] = ConfigRecord({"client_id": client_id, "npz": data})
        return
    if STATE_KEY in context.state:
        del context.state[STATE_KEY]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
