"""Test-only ClientApp: the real fedcogen ClientApp plus fault hooks of the run and of the device.

Why a separate app: fault injection is a testing tool. A production device runs
``fedcogen.client.fl.fl_clientapp:app``, which has no code path that fails on the server's say-so;
simulations and deployment tests that want failing clients select this app explicitly
(``fedcogen.simulations.federation.fault_app:app``), e.g. ``fedcogen simulate --fail-nodes 1@2`` does.

Two kinds of fault: the run's ``fail_nodes`` / ``fail_prob`` make a partition raise (a device
that drops out), and a SuperNode started with ``--node-config 'fault="malformed"'`` (or
``oversize`` / ``nan``) trains, then sends a corrupted update (a broken or hostile device): a
property of the *device*, so one deployment can mix honest and broken devices.
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedcogen.client.fl import fl_clientapp as real
from fedcogen.client.fl.node_data import partition_id, settings_from
from fedcogen.protocols import fl_messages as fm
from fedcogen.run_config import FLSettings

log = logging.getLogger(__name__)

FAULTS = ("malformed", "oversize", "nan")
DEFAULT_OVERSIZE = 64 * 1024 * 1024 + 1

app = ClientApp()
app.query()(real.query)
app.evaluate()(real.evaluate)


def injected_failure(settings: FLSettings, server_round: int, partition_id: int) -> str | None:
    """Why this partition must fail this round (``fail_nodes`` list or ``fail_prob`` coin), else None."""
    if settings.fails(partition_id, server_round):
        return f"injected failure: partition {partition_id} fails in round {server_round} (fail_nodes)"
    if settings.fail_prob > 0:
        coin = np.random.default_rng([settings.seed, server_round, partition_id, 99]).random()
        if coin < settings.fail_prob:
            return f"injected failure: partition {partition_id} dropped in round {server_round} (fail_prob)"
    return None


@app.train()
def train(msg: Message, context: Context) -> Message:
    settings, cfg = settings_from(msg, context)
    server_round = int(cfg.get("server_round", msg.metadata.group_id or 0))
    reason = injected_failure(settings, server_round, partition_id(context))
    if reason:
        raise RuntimeError(reason)
    reply = real.train(msg, context)
    fault = str(context.node_config.get("fault", ""))
    if fault and not reply.has_error():
        update = reply.content.config_records[fm.UPDATE]
        size = int(context.node_config.get("fault-bytes", DEFAULT_OVERSIZE))
        update["blob"] = corrupt_blob(bytes(update["blob"]), fault, oversize_bytes=size)
        log.warning("fault injection: node %s sends a %s update", context.node_config.get("partition-id"), fault)
    return reply


def corrupt_blob(blob: bytes, fault: str, oversize_bytes: int = DEFAULT_OVERSIZE) -> bytes:
    """What a broken or hostile device might send instead of its real sparse update.

    ``malformed``: bytes that are not a sparse-codec blob at all; ``oversize``: the real blob padded
    past the server's byte cap; ``nan``: the same bytes with every float32-aligned word set to NaN
    (decodes, or not, depending on the codec - either way it must be rejected, never averaged in).
    """
    if fault == "malformed":
        return b"\x00fedcogen: not a sparse update\xff" * 8
    if fault == "oversize":
        return bytes(blob) + b"\x00" * max(0, oversize_bytes - len(blob))
    if fault == "nan":
        raw = bytearray(blob)
        words = np.frombuffer(bytes(raw[: len(raw) // 4 * 4]), dtype=np.float32).copy()
        words[len(words) // 2 :] = np.nan
        raw[: len(words) * 4] = words.tobytes()
        return bytes(raw)
    raise ValueError(f"unknown fault {fault!r} (known: {', '.join(FAULTS)})")


def needs_fault_app(settings: FLSettings) -> bool:
    """Whether a run config asks for injected failures (and so needs this app, not the real one)."""
    return bool(settings.fail_nodes.strip()) or settings.fail_prob > 0
