"""Record schema of the federated-LoRA messages, and their real on-the-wire size.

Why one module: the ServerApp builds these records and the ClientApp parses them; the byte
ledger measures them. Keeping keys and types in one place means a renamed field breaks loudly
(``SchemaError``) instead of silently training on defaults.

Message types (Flower ``message_type``):

* ``query``  (server -> client): hello. Reply: the client's id (user id of its partition) and the
  broadcast version it holds (persisted on its disk, so it survives a restart).
* ``train``  (server -> client): ``config`` ConfigRecord with the run settings and the broadcast
  patch that brings the client to this round's broadcast adapter (``patch_kind`` = ``delta``: add
  the lossy sparse delta; ``chain``: the deltas of every missed version, in order, for clients a few
  rounds behind; ``overwrite``: set the listed coordinates, lossless catch-up; ``full``: overwrite from
  the seeded initial adapter), plus its sha256 ``digest``. Blobs are addressed by the adapter's
  tensor schema (:mod:`fedcogen.protocols.codecs.tensor_schema`), whose digest each blob carries.
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

from fedcogen.protocols.codecs import sparse_codec as codec
from fedcogen.protocols.codecs.patch_chain import unpack_chain

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
PATCH_CHAIN = "chain"  # the missed deltas, in order (protocols/codecs/patch_chain.py)
PATCH_KINDS = (PATCH_NONE, PATCH_DELTA, PATCH_OVERWRITE, PATCH_FULL, PATCH_CHAIN)

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
    if kind == PATCH_CHAIN:  # every link validated before any is applied: a bad chain changes nothing
        links = [codec.decode_sparse(b, shapes) for b in unpack_chain(blob)]
        for sparse in links:
            _apply(out, sparse, PATCH_DELTA)
        return out
    _apply(out, codec.decode_sparse(bytes(blob), shapes), kind)
    return out


def _apply(out: dict[str, Any], sparse: Mapping[str, codec.SparseTensor], kind: str) -> None:
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
