"""Test-only ClientApp: the real fedcogen ClientApp plus the ``fail_nodes`` / ``fail_prob`` hooks.

Why a separate app: fault injection is a testing tool. A production device runs
``fedcogen.client.fl_clientapp:app``, which has no code path that fails on the server's say-so;
simulations and deployment tests that want failing clients select this app explicitly
(``fedcogen.client.fault_app:app``), e.g. ``fedcogen simulate --fail-nodes 1@2`` does.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedcogen.client import fl_clientapp as real
from fedcogen.run_config import FLSettings

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
    settings, cfg = real._settings_from(msg, context)
    server_round = int(cfg.get("server_round", msg.metadata.group_id or 0))
    reason = injected_failure(settings, server_round, real._partition_id(context))
    if reason:
        raise RuntimeError(reason)
    return real.train(msg, context)


def needs_fault_app(settings: FLSettings) -> bool:
    """Whether a run config asks for injected failures (and so needs this app, not the real one)."""
    return bool(settings.fail_nodes.strip()) or settings.fail_prob > 0
