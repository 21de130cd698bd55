"""The federated server's state: what survives a restart, and the broadcast versions it serves.

The server keeps the true global adapter ``G`` and the broadcast adapter ``B`` every up-to-date
client has rebuilt. Each round's broadcast is the top-k of ``G - B`` (whatever was not sent stays
in the gap, the server residual); clients that missed rounds get a lossless ``overwrite`` catch-up
from the changed-index history and unknown clients a ``full`` patch from the seeded initial adapter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedcogen.lora_adapter import adapter_digest
from fedcogen.protocols import fl_messages as fm
from fedcogen.protocols import sparse_codec as codec
from fedcogen.protocols.patch_chain import pack_chain
from fedcogen.run_config import FLSettings
from fedcogen.server.catchup import chain_size, keep_delta
from fedcogen.server.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

UNKNOWN = -1


@dataclass
class ServerState:
    """Everything that must survive a restart (all of it goes into the checkpoint)."""

    round: int
    global_adapter: dict[str, np.ndarray]
    broadcast: dict[str, np.ndarray]
    changed: dict[int, dict[str, np.ndarray]]  # version -> flat indices changed by that version's delta
    last_delta: bytes
    client_versions: dict[str, int]
    opt_m: dict[str, np.ndarray] = field(default_factory=dict)
    opt_v: dict[str, np.ndarray] = field(default_factory=dict)
    opt_steps: int = 0
    dp_rounds: int = 0
    deltas: dict[int, bytes] = field(default_factory=dict)  # version -> its broadcast delta (catch-up chains)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    ledger: list[dict[str, Any]] = field(default_factory=list)

    @property
    def version(self) -> int:
        return self.round


# --------------------------------------------------------------------------- checkpoint mapping


def _fingerprint(s: FLSettings) -> dict[str, Any]:
    """Settings that must match for a resume to be meaningful."""
    keys = ("model", "seed", "lora_r", "lora_alpha", "lora_targets", "num_clients", "server_opt")
    # the aggregation mode decides what the arrays mean (only named when not the default: old checkpoints resume)
    mode = {"lora_mode": s.lora_mode} if s.lora_mode != "lora" else {}
    return {**{k: getattr(s, k) for k in keys}, **mode}


def save_state(folder: Path, state: ServerState, settings: FLSettings) -> None:
    arrays: dict[str, np.ndarray] = {}
    arrays.update({f"global/{k}": v for k, v in state.global_adapter.items()})
    arrays.update({f"broadcast/{k}": v for k, v in state.broadcast.items()})
    arrays.update({f"opt_m/{k}": v for k, v in state.opt_m.items()})
    arrays.update({f"opt_v/{k}": v for k, v in state.opt_v.items()})
    for ver, tensors in state.changed.items():
        arrays.update({f"changed/{ver}/{k}": v for k, v in tensors.items()})
    arrays["last_delta"] = np.frombuffer(state.last_delta, dtype=np.uint8)
    arrays.update({f"delta/{ver}": np.frombuffer(b, dtype=np.uint8) for ver, b in state.deltas.items()})
    residual = {k: state.global_adapter[k] - state.broadcast[k] for k in state.global_adapter}
    arrays.update({f"server_residual/{k}": v for k, v in residual.items()})
    meta = {
        "round": state.round,
        "client_versions": state.client_versions,
        "opt_steps": state.opt_steps,
        "dp_rounds": state.dp_rounds,
        "metrics": state.metrics,
        "ledger": state.ledger,
        # All randomness is derived from (seed, round) with SeedSequence, so the seed *is* the RNG state.
        "rng": {"seed": settings.seed, "scheme": "SeedSequence([seed, round, stream])"},
        "fingerprint": _fingerprint(settings),
        "settings": settings.to_config(),
    }
    save_checkpoint(folder, arrays, meta)


def load_state(folder: Path, settings: FLSettings) -> ServerState:
    arrays, meta = load_checkpoint(folder)
    if meta.get("fingerprint") != _fingerprint(settings):
        raise CheckpointError(
            f"checkpoint in {folder} is from a different run ({meta.get('fingerprint')} vs {_fingerprint(settings)})"
        )

    def group(prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix) + 1 :]: v for k, v in arrays.items() if k.startswith(prefix + "/")}

    changed: dict[int, dict[str, np.ndarray]] = {}
    for key, arr in group("changed").items():
        ver, name = key.split("/", 1)
        changed.setdefault(int(ver), {})[name] = arr.astype(np.int64)
    return ServerState(
        round=int(meta["round"]),
        global_adapter={k: v.astype(np.float32) for k, v in group("global").items()},
        broadcast={k: v.astype(np.float32) for k, v in group("broadcast").items()},
        changed=changed,
        last_delta=bytes(arrays["last_delta"].tobytes()),
        client_versions={k: int(v) for k, v in meta["client_versions"].items()},
        opt_m=group("opt_m"),
        opt_v=group("opt_v"),
        opt_steps=int(meta["opt_steps"]),
        dp_rounds=int(meta["dp_rounds"]),
        deltas={int(k): bytes(v.tobytes()) for k, v in group("delta").items()},
        metrics=list(meta["metrics"]),
        ledger=list(meta["ledger"]),
    )


# --------------------------------------------------------------------------- broadcast versions


def patch_for(state: ServerState, client_id: str) -> fm.Patch:
    """Patch bringing ``client_id`` from the version it holds to the current broadcast version."""
    st = state
    cur = st.version
    held = st.client_versions.get(client_id, UNKNOWN)
    digest = adapter_digest(st.broadcast)
    if held == cur:
        return fm.Patch(fm.PATCH_NONE, cur, cur, b"", digest)
    if held == cur - 1 and st.last_delta:
        return fm.Patch(fm.PATCH_DELTA, held, cur, st.last_delta, digest)
    base = 0 if held == UNKNOWN else held
    kind = fm.PATCH_FULL if held == UNKNOWN else fm.PATCH_OVERWRITE
    idx: dict[str, np.ndarray] = {}
    for ver in range(base + 1, cur + 1):
        for name, ix in st.changed.get(ver, {}).items():
            idx[name] = np.union1d(idx[name], ix) if name in idx else ix
    chain = chain_size(st.deltas, base, cur)
    if chain is not None and chain <= 4 * sum(int(ix.size) for ix in idx.values()):  # fp32 values alone
        return fm.Patch(fm.PATCH_CHAIN, base, cur, pack_chain([st.deltas[v] for v in range(base + 1, cur + 1)]),
                        digest)
    return fm.Patch(kind, base, cur, fm.overwrite_patch(st.broadcast, idx), digest)


def advance_broadcast(state: ServerState, server_round: int, cfg: codec.CodecConfig,
                      shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Compress ``G - B`` (server error feedback: the gap is the residual) into version ``server_round``."""
    st = state
    gap = {k: st.global_adapter[k] - st.broadcast[k] for k in st.global_adapter}
    sparse = codec.topk_sparsify(gap, cfg)
    blob = codec.encode_sparse(sparse, cfg, shapes)
    st.broadcast = fm.apply_patch(st.broadcast, fm.PATCH_DELTA, blob, shapes)
    st.changed[server_round] = {k: np.asarray(t.indices, np.int64) for k, t in sparse.items() if t.k}
    st.last_delta = blob
    keep_delta(st.deltas, server_round, blob)
    st.round = server_round
