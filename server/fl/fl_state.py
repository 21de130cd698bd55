"""The federated server's state: what survives a restart, and the broadcast versions it serves.

The server keeps the true global adapter ``G`` and the broadcast adapter ``B`` every up-to-date
client has rebuilt. Each round's broadcast is the top-k of ``G - B`` (whatever was not sent stays
in the gap, the server residual); clients that missed rounds get the ``chain`` of broadcast deltas
they missed (the last :data:`KEEP_DELTAS` deltas are kept, checkpointed) or, where smaller, a lossless
``overwrite`` of every coordinate changed since their version; unknown clients a chain or ``full``
patch from the seeded initial adapter.

What it costs per round does not grow with the run's length: instead of a history of changed
indices per version, one int32 array per tensor records the version at which each coordinate of
``B`` last changed (a catch-up from version ``h`` is every coordinate with ``last_changed > h``);
per-round metrics and the byte ledger go to append-only journals (``rounds.jsonl``,
``ledger.jsonl``) next to the checkpoint, which stores only how many journal rows it covers (rows a
crashed round appended after the last checkpoint are cut off on resume).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedcogen.lora_adapter import adapter_digest
from fedcogen.protocols import fl_messages as fm
from fedcogen.protocols.codecs import sparse_codec as codec
from fedcogen.protocols.codecs.patch_chain import pack_chain
from fedcogen.run_config import FLSettings
from fedcogen.server.fl.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint, save_checkpoint
from fedcogen.server.fl.dp_guard import dp_fingerprint

LEDGER_JOURNAL = "ledger.jsonl"
ROUNDS_JOURNAL = "rounds.jsonl"

UNKNOWN = -1

# A chain re-sends every delta a client missed, so it only pays for clients a few versions behind;
# keeping the last KEEP_DELTAS deltas bounds the server's memory and checkpoint, and clients further
# behind (or new ones, once version 1 is gone) get the lossless overwrite patch.
KEEP_DELTAS = 32


def keep_delta(deltas: dict[int, bytes], version: int, blob: bytes, keep: int = KEEP_DELTAS) -> None:
    """Keep ``blob`` as version ``version``'s broadcast delta, dropping all but the last ``keep``."""
    deltas[version] = bytes(blob)
    for old in sorted(deltas)[:-keep]:
        del deltas[old]


def chain_size(deltas: dict[int, bytes], base: int, cur: int) -> int | None:
    """Bytes of the chain from version ``base`` to ``cur`` (None if a delta is no longer kept)."""
    if cur <= base or any(v not in deltas for v in range(base + 1, cur + 1)):
        return None
    return sum(len(deltas[v]) for v in range(base + 1, cur + 1))


@dataclass
class ServerState:
    """Everything that must survive a restart (arrays and tables in the checkpoint, rows in journals)."""

    round: int
    global_adapter: dict[str, np.ndarray]
    broadcast: dict[str, np.ndarray]
    last_changed: dict[str, np.ndarray]  # flat int32: version at which each coordinate of B last changed
    last_delta: bytes
    client_versions: dict[str, int]
    opt_m: dict[str, np.ndarray] = field(default_factory=dict)
    opt_v: dict[str, np.ndarray] = field(default_factory=dict)
    opt_steps: int = 0
    dp_history: list[list[float]] = field(default_factory=list)  # (noise multiplier, sample rate) per DP round
    participations: dict[str, int] = field(default_factory=dict)  # accepted updates per client
    deltas: dict[int, bytes] = field(default_factory=dict)  # version -> its broadcast delta (catch-up chains)
    metrics: list[dict[str, Any]] = field(default_factory=list)  # every round's row (committed + pending)
    ledger: list[dict[str, Any]] = field(default_factory=list)  # rows not yet in the journal
    metrics_rows: int = 0  # rows of ``metrics`` already in the rounds journal
    ledger_rows: int = 0  # rows in the ledger journal
    bytes_total: int = 0  # every booked message so far, both ways
    _patches: dict[tuple[str, int, int], fm.Patch] = field(default_factory=dict, repr=False)

    @property
    def version(self) -> int:
        return self.round

    @property
    def dp_rounds(self) -> int:
        return len(self.dp_history)

    @classmethod
    def fresh(cls, initial: Mapping[str, np.ndarray]) -> ServerState:
        g = {k: np.array(v, np.float32, copy=True) for k, v in initial.items()}
        return cls(0, g, {k: v.copy() for k, v in g.items()},
                   {k: np.zeros(v.size, np.int32) for k, v in g.items()}, b"", {})


# --------------------------------------------------------------------------- checkpoint mapping


# Every FLSettings field that changes what a run computes or records, so a resume that changes one
# would mix two experiments under the new label (metrics record the settings of the last start).
# Left out, on purpose: where things are written (out_dir; data_dir and client_state_dir count by
# their place relative to out_dir, so a moved run still resumes), how long to wait (round_timeout),
# when to stop (rounds, stop_after, target_eval_loss, dp_target_epsilon: stopping rules do not change
# the rounds already run) and how to start (resume, overwrite). DP settings enter through
# dp_fingerprint, which names only those that matter for the DP mode in use.
RESULT_KEYS = (
    "model", "seed", "data_dir", "client_state_dir", "num_clients", "clients_per_round", "local_steps",
    "batch_size", "lr", "max_seq_len", "history_examples", "fact_swaps", "lora_r", "lora_alpha",
    "lora_dropout", "lora_targets", "lora_mode", "density", "scope", "quant", "index_coding",
    "support", "down_density", "down_quant", "warmup_rounds", "server_opt", "server_lr", "min_fit_clients",
    "eval_every", "eval_on", "eval_clients", "max_update_norm", "max_update_bytes", "secagg",
    "secagg_range", "fail_prob", "fail_nodes",
)
NOT_RESULT_KEYS = ("out_dir", "round_timeout", "rounds", "stop_after", "target_eval_loss", "resume",
                   "overwrite", "dp_mode", "dp_clip_norm", "dp_noise_multiplier", "dp_delta",
                   "dp_target_epsilon",  # the dp_* ones: through dp_fingerprint
                   "device")  # where it runs: `auto` resolves per machine, and a run may continue on another one

# what a run leaves in out_dir that a fresh run replaces (and so must not replace unasked)
PREVIOUS_RUN_FILES = (CHECKPOINT_NAME, "metrics.json", "metrics.md", "ledger.json", ROUNDS_JOURNAL, LEDGER_JOURNAL)


def _place(path: str, out_dir: str) -> str:
    """A folder setting as compared on resume: relative to out_dir when inside it."""
    if not path:
        return ""
    p, out = Path(path).resolve(), Path(out_dir).resolve()
    return str(p.relative_to(out)) if p.is_relative_to(out) else str(p)


def _fingerprint(s: FLSettings) -> dict[str, Any]:
    """The settings that must match for a resume to continue the same experiment (:data:`RESULT_KEYS`)."""
    fp = {k: getattr(s, k) for k in RESULT_KEYS}
    for key in ("data_dir", "client_state_dir"):
        fp[key] = _place(fp[key], s.out_dir)
    return {**fp, "dp": dp_fingerprint(s)}


def _stored_fingerprint(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The fingerprint of the settings a checkpoint was written with (its full ``settings``, so
    checkpoints written before a key joined :data:`RESULT_KEYS` compare on it too)."""
    stored = meta.get("settings")
    if isinstance(stored, Mapping):
        known = set(FLSettings.__dataclass_fields__)
        try:
            return _fingerprint(FLSettings.from_mapping({k: v for k, v in stored.items() if k in known}))
        except ValueError:
            pass
    return dict(meta.get("fingerprint") or {})


def check_resumable(folder: str | Path, settings: FLSettings) -> dict[str, Any]:
    """Raise :class:`CheckpointError` naming every result-altering setting that differs from the
    checkpoint's; returns the checkpoint's metadata. Cheap (reads the metadata only) so callers can
    refuse a changed resume before starting a federation."""
    _, meta = load_checkpoint(folder, with_arrays=False)
    old, new = _stored_fingerprint(meta), _fingerprint(settings)
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        changes = "; ".join(f"{k}: {old.get(k)!r} in the checkpoint, {new.get(k)!r} now" for k in diff)
        raise CheckpointError(
            f"cannot resume the run in {folder}: its settings differ in {', '.join(diff)} ({changes}); "
            "resume with the checkpoint's settings, or start a new out_dir"
        )
    return meta


def previous_run_files(folder: str | Path) -> list[str]:
    """The results of an earlier run in ``folder`` that a fresh start would replace."""
    out = Path(folder)
    found = [name for name in PREVIOUS_RUN_FILES if (out / name).exists()]
    clients = out / "clients"
    if clients.is_dir() and any(clients.iterdir()):
        found.append("clients/")
    return found


def start_fresh(folder: str | Path, settings: FLSettings) -> None:
    """Make room for a fresh run in ``folder``: refused (naming the files) when an earlier run's
    results are there, unless ``settings.overwrite``; with it, they are removed. ``clients/`` is
    left to whoever runs the clients (``fedcogen simulate`` removes it)."""
    found = previous_run_files(folder)
    if found and not settings.overwrite:
        raise CheckpointError(
            f"out_dir {folder} holds a previous run ({', '.join(found)}); continue it with resume "
            "(--resume), replace it with overwrite (--overwrite), or choose another out_dir"
        )
    for name in PREVIOUS_RUN_FILES:
        (Path(folder) / name).unlink(missing_ok=True)


def _append_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    with path.open("a") as fh:
        for row in rows:
            fh.write(json.dumps(row, default=_json_default) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_rows(path: Path, keep: int | None = None) -> list[dict[str, Any]]:
    """The first ``keep`` rows of a journal (all without ``keep``); the file is cut to them."""
    if not path.is_file():
        if keep:
            raise CheckpointError(f"journal {path} is missing ({keep} rows expected)")
        return []
    rows: list[dict[str, Any]] = []
    size = 0
    with path.open("rb") as fh:
        for line in fh:
            if keep is not None and len(rows) >= keep:
                break
            if not line.endswith(b"\n"):
                break  # a torn last line: never part of a checkpoint
            rows.append(json.loads(line))
            size += len(line)
    if keep is not None:
        if len(rows) < keep:
            raise CheckpointError(f"journal {path} has {len(rows)} rows, checkpoint expects {keep}")
        with path.open("r+b") as fh:
            fh.truncate(size)
    return rows


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer | np.floating):
        return o.item()
    return str(o)


def save_state(folder: Path, state: ServerState, settings: FLSettings) -> None:
    """Append the pending journal rows, then write the checkpoint that covers them (atomic)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _append_rows(folder / ROUNDS_JOURNAL, state.metrics[state.metrics_rows:])
    state.metrics_rows = len(state.metrics)
    _append_rows(folder / LEDGER_JOURNAL, state.ledger)
    state.ledger_rows += len(state.ledger)
    state.ledger = []
    arrays: dict[str, np.ndarray] = {}
    arrays.update({f"global/{k}": v for k, v in state.global_adapter.items()})
    arrays.update({f"broadcast/{k}": v for k, v in state.broadcast.items()})
    arrays.update({f"last_changed/{k}": v for k, v in state.last_changed.items()})
    arrays.update({f"opt_m/{k}": v for k, v in state.opt_m.items()})
    arrays.update({f"opt_v/{k}": v for k, v in state.opt_v.items()})
    arrays["last_delta"] = np.frombuffer(state.last_delta, dtype=np.uint8)
    arrays.update({f"delta/{ver}": np.frombuffer(b, dtype=np.uint8) for ver, b in state.deltas.items()})
    # G - B, what the broadcast has not sent yet (derivable; kept for inspection)
    arrays.update({f"server_residual/{k}": state.global_adapter[k] - state.broadcast[k] for k in state.global_adapter})
    meta = {
        "round": state.round,
        "client_versions": state.client_versions,
        "opt_steps": state.opt_steps,
        "dp_rounds": state.dp_rounds,
        "dp_history": state.dp_history,
        "participations": state.participations,
        "metrics_rows": state.metrics_rows,
        "ledger_rows": state.ledger_rows,
        "bytes_total": state.bytes_total,
        # Non-privacy randomness (data, initialisation, training, the sample without DP) is derived from
        # (seed, round) with SeedSequence, so the seed is its whole state. DP noise and the DP training
        # sample are not: they come from the OS CSPRNG at each draw and no state of them is kept here.
        "rng": {"seed": settings.seed, "scheme": "SeedSequence([seed, round, stream])",
                "dp_noise": "os-csprng, not stored" if settings.dp_mode != "none" else "none"},
        "fingerprint": _fingerprint(settings),
        "settings": settings.to_config(),
    }
    save_checkpoint(folder, arrays, meta)


def load_state(folder: Path, settings: FLSettings) -> ServerState:
    check_resumable(folder, settings)
    arrays, meta = load_checkpoint(folder)

    def group(prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix) + 1 :]: v for k, v in arrays.items() if k.startswith(prefix + "/")}

    metrics = read_rows(Path(folder) / ROUNDS_JOURNAL, int(meta["metrics_rows"]))
    read_rows(Path(folder) / LEDGER_JOURNAL, int(meta["ledger_rows"]))  # cut rows of an uncommitted round
    return ServerState(
        round=int(meta["round"]),
        global_adapter={k: v.astype(np.float32) for k, v in group("global").items()},
        broadcast={k: v.astype(np.float32) for k, v in group("broadcast").items()},
        last_changed={k: v.astype(np.int32) for k, v in group("last_changed").items()},
        last_delta=bytes(arrays["last_delta"].tobytes()),
        client_versions={k: int(v) for k, v in meta["client_versions"].items()},
        opt_m=group("opt_m"),
        opt_v=group("opt_v"),
        opt_steps=int(meta["opt_steps"]),
        dp_history=[list(map(float, x)) for x in meta["dp_history"]],
        participations={k: int(v) for k, v in meta["participations"].items()},
        deltas={int(k): bytes(v.tobytes()) for k, v in group("delta").items()},
        metrics=metrics,
        metrics_rows=len(metrics),
        ledger_rows=int(meta["ledger_rows"]),
        bytes_total=int(meta["bytes_total"]),
    )


def clear_journals(folder: Path) -> None:
    """A fresh run starts with empty journals."""
    for name in (ROUNDS_JOURNAL, LEDGER_JOURNAL):
        (Path(folder) / name).unlink(missing_ok=True)


# --------------------------------------------------------------------------- broadcast versions


def patch_for(state: ServerState, client_id: str) -> fm.Patch:
    """Patch bringing ``client_id`` from the version it holds to the current broadcast version.

    Patches are cached per (kind, base version) until the broadcast moves on: every new client of a
    round gets the same ``full`` patch, built once.
    """
    st = state
    cur = st.version
    held = st.client_versions.get(client_id, UNKNOWN)
    if held == cur - 1 and st.last_delta:
        kind, base = fm.PATCH_DELTA, held
    elif held == cur:
        kind, base = fm.PATCH_NONE, cur
    else:
        kind, base = (fm.PATCH_FULL, 0) if held == UNKNOWN else (fm.PATCH_OVERWRITE, held)
    key = (kind, base, cur)
    if key not in st._patches:
        if any(k[2] != cur for k in st._patches) or len(st._patches) > 16:
            st._patches.clear()
        digest = next((p.digest for p in st._patches.values()), None) or adapter_digest(st.broadcast)
        if kind == fm.PATCH_NONE:
            patch = fm.Patch(kind, cur, cur, b"", digest)
        elif kind == fm.PATCH_DELTA:
            patch = fm.Patch(kind, held, cur, st.last_delta, digest)
        else:
            idx = {name: np.flatnonzero(lc > base).astype(np.int64) for name, lc in st.last_changed.items()}
            chain = chain_size(st.deltas, base, cur)
            if chain is not None and chain <= 4 * sum(int(ix.size) for ix in idx.values()):  # fp32 values alone
                patch = fm.Patch(fm.PATCH_CHAIN, base, cur,
                                 pack_chain([st.deltas[v] for v in range(base + 1, cur + 1)]), digest)
            else:
                patch = fm.Patch(kind, base, cur, fm.overwrite_patch(st.broadcast, idx), digest)
        st._patches[key] = patch
    return st._patches[key]


def forget_if_stale(state: ServerState, client_id: str, reason: str) -> None:
    """A client that could not rebuild its broadcast (lost state, corrupt copy) gets a full patch next time."""
    if "stale_broadcast" in reason or "digest_mismatch" in reason:
        state.client_versions.pop(client_id, None)


def advance_broadcast(state: ServerState, server_round: int, cfg: codec.CodecConfig,
                      shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Compress ``G - B`` (server error feedback: the gap is the residual) into version ``server_round``:
    its top-k, or its values at ``cfg``'s shared random support (no indices; catch-up chains of such
    deltas decode from each blob's own seed)."""
    st = state
    gap = {k: st.global_adapter[k] - st.broadcast[k] for k in st.global_adapter}
    sparse = codec.sparsify(gap, cfg)
    blob = codec.encode_sparse(sparse, cfg, shapes)
    st.broadcast = fm.apply_patch(st.broadcast, fm.PATCH_DELTA, blob, shapes)
    for k, t in sparse.items():
        if t.k:
            st.last_changed[k][np.asarray(t.indices, np.int64)] = server_round
    st.last_delta = blob
    keep_delta(st.deltas, server_round, blob)
    st.round = server_round
    st._patches.clear()
