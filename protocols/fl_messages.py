"""Record schema of the federated-LoRA messages, and their real on-the-wire size.

Why one module: the ServerApp builds these records and the ClientApp parses them; the byte
ledger measures them. Keeping keys and types in one place means a renamed field breaks loudly
(``SchemaError``) instead of silently training on defaults.

Message types (Flower ``message_type``):

* ``query``  (server -> client): hello. Reply: the client's id (user id of its partition) and the
  broadcast version it holds (persisted on its disk, so it survives a restart).
* ``train``  (server -> client): ``config`` ConfigRecord with the run settings and the broadcast
  patch that brings the client to this round's broadcast adapter (``patch_kind`` = ``delta``: add
  the lossy sparse delta; ``overwrite``: set the listed coordinates, lossless catch-up; ``full``:
  overwrite from the seeded initial adapter), plus its sha256 ``digest``.
  Reply: ``update`` ConfigRecord (``blob`` = codec bytes of the sparse, error-fed-back update) and a
  ``metrics`` MetricRecord (``num-examples``, ``train_loss``, tokens, seconds).
* ``evaluate`` (server -> client): same patch fields (no training). Reply: ``metrics`` with
  ``eval_loss``, ``eval_tokens``, ``num-examples`` on the client's private validation split.

Sizes: :func:`wire_bytes` serialises the *actual* Flower ``Message`` with Flower's own serde
(``flwr.common.serde.message_to_proto``) and returns the protobuf's byte count, i.e. what a
SuperLink/SuperNode pair exchanges for that message (metadata + records; gRPC framing aside).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedcogen.protocols import sparse_codec as codec

MSG_QUERY = "query"
MSG_TRAIN = "train"
MSG_EVALUATE = "evaluate"

CONFIG = "config"
UPDATE = "update"
METRICS = "metrics"

PATCH_NONE = "none"
PATCH_DELTA = "delta"
PATCH_OVERWRITE = "overwrite"
PATCH_FULL = "full"
PATCH_KINDS = (PATCH_NONE, PATCH_DELTA, PATCH_OVERWRITE, PATCH_FULL)

NUM_EXAMPLES = "num-examples"


class SchemaError(ValueError):
    """A message lacks a field or has the wrong type; the message names which."""


@dataclass
class Patch:
    """How a client rebuilds the broadcast adapter of version ``target_version``."""

    kind: str
    base_version: int
    target_version: int
    blob: bytes
    digest: str

    def __post_init__(self) -> None:
        if self.kind not in PATCH_KINDS:
            raise SchemaError(f"unknown patch kind {self.kind!r} (expected one of {PATCH_KINDS})")


def patch_fields(patch: Patch) -> dict[str, Any]:
    return {
        "patch_kind": patch.kind,
        "base_version": int(patch.base_version),
        "target_version": int(patch.target_version),
        "patch": bytes(patch.blob),
        "digest": patch.digest,
    }


def get_field(record: Mapping[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in record:
        raise SchemaError(f"{where}: missing field '{key}'")
    value = record[key]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, typ):
        raise SchemaError(f"{where}: field '{key}' is {type(value).__name__}, expected {typ}")
    return value


def read_patch(config: Mapping[str, Any]) -> Patch:
    where = "broadcast patch"
    return Patch(
        kind=get_field(config, "patch_kind", str, where),
        base_version=get_field(config, "base_version", int, where),
        target_version=get_field(config, "target_version", int, where),
        blob=get_field(config, "patch", bytes, where),
        digest=get_field(config, "digest", str, where),
    )


def make_recorddict(config: Mapping[str, Any] | None = None, metrics: Mapping[str, Any] | None = None,
                    update: Mapping[str, Any] | None = None) -> Any:
    """RecordDict with the standard record names (ConfigRecord/MetricRecord)."""
    from flwr.app import ConfigRecord, MetricRecord, RecordDict

    rd = RecordDict()
    if config is not None:
        rd[CONFIG] = ConfigRecord(dict(config))
    if update is not None:
        rd[UPDATE] = ConfigRecord(dict(update))
    if metrics is not None:
        rd[METRICS] = MetricRecord({k: (float(v) if isinstance(v, float) else int(v)) for k, v in metrics.items()})
    return rd


def config_of(content: Any, key: str = CONFIG) -> dict[str, Any]:
    if key not in content.config_records:
        raise SchemaError(f"message has no '{key}' config record (has {list(content.keys())})")
    return dict(content.config_records[key])


def metrics_of(content: Any) -> dict[str, float]:
    if METRICS not in content.metric_records:
        return {}
    return {k: float(v) for k, v in content.metric_records[METRICS].items()}


def wire_bytes(message: Any) -> int:
    """Serialized protobuf size of a Flower ``Message`` via Flower's own serde (what crosses the wire)."""
    from flwr.common.serde import message_to_proto

    return int(message_to_proto(message).ByteSize())


def recorddict_bytes(content: Any) -> int:
    """Serialized size of a RecordDict alone (payload without message metadata)."""
    from flwr.common.serde import recorddict_to_proto

    return int(recorddict_to_proto(content).ByteSize())


# --------------------------------------------------------------------------- run settings

CLIENT_KEYS = (
    "model", "seed", "data_dir", "num_clients", "clients_per_round", "local_steps", "batch_size", "lr",
    "max_seq_len", "lora_r", "lora_alpha", "lora_dropout", "lora_targets", "density", "scope", "quant",
    "index_coding", "dp_mode", "dp_clip_norm", "dp_noise_multiplier", "dp_delta", "client_state_dir",
    "fail_prob", "fail_nodes", "history_examples", "fact_swaps",
)


@dataclass
class FLSettings:
    """Every knob of a federated run, as flat run-config keys (``[tool.flwr.app.config]``).

    The ServerApp reads them from ``context.run_config`` (plus overrides given by the simulation
    driver) and forwards the client-relevant ones inside every ``train``/``evaluate`` message, so
    clients need no configuration of their own and a deployment cannot drift from the server.
    """

    model: str = "tiny"
    seed: int = 0
    data_dir: str = ""
    num_clients: int = 3
    clients_per_round: int = 3
    rounds: int = 2
    local_steps: int = 4
    batch_size: int = 4
    lr: float = 5e-4
    max_seq_len: int = 256
    # train on the user's past texts too (prompt without private context); off by default because it
    # teaches the device to invent facts instead of copying them from the context (docs/personalisation.md);
    # privacy runs turn it on so that the canaries planted in those texts are trained on
    history_examples: bool = False
    # counterfactual copies of each training task with the user's private values swapped for fake
    # ones (simulations.data.swap_private_values): training rewards copying from the context, not
    # memorising one user's facts, so the skill carries over to users who never trained
    fact_swaps: int = 0
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: str = "q_proj,v_proj"
    density: float = 0.01
    scope: str = "per_tensor"
    quant: str = "int8"
    index_coding: str = "auto"
    down_density: float = 0.0  # 0 = auto: min(1, density * clients_per_round)
    down_quant: str = ""  # "" = same as quant
    server_opt: str = "fedavg"
    server_lr: float = 1.0
    min_fit_clients: int = 1
    round_timeout: float = 600.0
    eval_every: int = 1
    eval_on: str = "all"  # "all" clients, or only this "round"'s clients (no catch-up patches)
    max_update_norm: float = 1e4
    max_update_bytes: int = 64 * 1024 * 1024
    out_dir: str = "runs/federation"
    client_state_dir: str = ""  # "" = keep client state only in Flower's context.state
    resume: bool = False
    dp_mode: str = "none"
    dp_clip_norm: float = 1.0
    dp_noise_multiplier: float = 0.0
    dp_delta: float = 1e-5
    dp_target_epsilon: float = 0.0  # 0 = no budget
    fail_prob: float = 0.0
    fail_nodes: str = ""  # "P" (partition P fails every round) or "P@R" (only in round R), comma separated
    stop_after: int = 0  # stop (cleanly, checkpointed) after this many rounds in total; 0 = run all

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> FLSettings:
        """Typed settings from a run config; unknown keys are ignored, wrong types raise a clear error."""
        import dataclasses

        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = f.name
            alt = key.replace("_", "-")
            if key not in values and alt not in values:
                continue
            raw = values[key] if key in values else values[alt]
            default = f.default
            try:
                if isinstance(default, bool):
                    value: Any = raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes")
                elif isinstance(default, int):
                    value = int(raw)
                elif isinstance(default, float):
                    value = float(raw)
                else:
                    value = str(raw)
            except (TypeError, ValueError) as exc:
                raise SchemaError(f"run config '{key}' = {raw!r} is not a valid {type(default).__name__}") from exc
            kwargs[key] = value
        return cls(**kwargs)

    def to_config(self) -> dict[str, Any]:
        import dataclasses

        return dataclasses.asdict(self)

    def client_config(self) -> dict[str, Any]:
        """The client-side settings that differ from the defaults (every byte is on the ledger).

        Clients rebuild their settings from these keys over the *dataclass defaults* only (never
        over their own run config), so omitting a default value can never change what they use.
        """
        full = self.to_config()
        defaults = FLSettings().to_config()
        return {k: full[k] for k in CLIENT_KEYS if full[k] != defaults[k]}

    def effective_down_density(self) -> float:
        if self.down_density > 0:
            return min(1.0, self.down_density)
        return min(1.0, self.density * max(1, self.clients_per_round))

    def fails(self, partition_id: int, server_round: int) -> bool:
        """Whether the ``fail_nodes`` test hook says this partition must fail in this round."""
        for item in filter(None, (x.strip() for x in self.fail_nodes.split(","))):
            pid, _, rnd = item.partition("@")
            if int(pid) == partition_id and (not rnd or int(rnd) == server_round):
                return True
        return False


# --------------------------------------------------------------------------- broadcast patches


def overwrite_patch(target: Mapping[str, Any], indices: Mapping[str, Any]) -> bytes:
    """Lossless catch-up: the fp32 values of ``target`` at ``indices`` (flat), codec-encoded."""
    sparse = {}
    for name, arr in target.items():
        idx = np.asarray(indices.get(name, np.empty(0, np.int64)), dtype=np.int64)
        flat = np.asarray(arr, np.float32).reshape(-1)
        sparse[name] = codec.SparseTensor(idx, flat[idx].astype(np.float32), tuple(np.shape(arr)))
    return codec.encode_sparse(sparse, codec.CodecConfig(density=1.0, quant="fp32"))


def apply_patch(
    base: Mapping[str, Any], kind: str, blob: bytes, shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, Any]:
    """Rebuild an adapter from ``base`` and a patch; both sides run exactly this code.

    ``delta`` adds the decoded sparse delta (float32), ``overwrite``/``full`` set coordinates.
    The blob is validated like any update (a corrupt broadcast must not poison a client).
    """
    out = {k: np.array(v, dtype=np.float32, copy=True) for k, v in base.items()}
    if kind == PATCH_NONE:
        return out
    sparse = codec.decode_sparse(bytes(blob), expected_shapes=dict(shapes))
    for name, st in sparse.items():
        flat = out[name].reshape(-1)
        idx = np.asarray(st.indices, dtype=np.int64)
        vals = np.asarray(st.values, dtype=np.float32)
        if kind == PATCH_DELTA:
            flat[idx] = flat[idx] + vals
        elif kind in (PATCH_OVERWRITE, PATCH_FULL):
            flat[idx] = vals
        else:
            raise SchemaError(f"unknown patch kind {kind!r}")
    return out
