"""Flower ClientApp (Message API, flwr 1.41): federated sparse-LoRA training on a device.

This module only wires Flower's handlers to the library: :mod:`fedcogen.client.fl.node_data` (settings
and private partition), :mod:`fedcogen.client.fl.local_round` (a round's work, callable without Flower),
:mod:`fedcogen.client.fl.update_compression` and :mod:`fedcogen.client.fl.client_state`.

What a device does per ``train`` message (see :mod:`fedcogen.protocols.fl_messages` for the schema):

1. rebuild this round's broadcast adapter from the patch the server sent (lossy sparse ``delta`` or
   ``chain`` of missed deltas on the copy it holds, or lossless ``overwrite``/``full`` catch-up) and
   check the sha256 digest;
2. train ``local_steps`` steps of target-token causal-LM loss on its own private partition;
3. update = trained - broadcast; add its error-feedback residual, keep the top-k, (clip/noise if
   DP is on), encode with the sparse codec against the adapter's tensor schema; new residual =
   corrected - what was actually sent (top-k and quantisation leftovers alike); with ``secagg`` the
   values at the round's shared random support instead (:mod:`fedcogen.client.fl.secagg_train`);
4. reply with the blob (or, under SecAgg+, the masked values) and metrics.

Per-client state is only: the error-feedback residual, the last two broadcast copies (by version)
and nothing else (a fresh AdamW per round); :mod:`fedcogen.client.fl.client_state` keeps it in the
client's own folder when ``client_state_dir`` is set (loaded for the one message that needs it, so a
process simulating a thousand clients holds none of them in memory), else in ``context.state``.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedcogen.client.fl import secagg_train
from fedcogen.client.fl.client_state import load_state, save_state
from fedcogen.client.fl.local_round import adopt_broadcast, evaluate_broadcast, run_train
from fedcogen.client.fl.node_data import client_id_for, partition_id, settings_from
from fedcogen.protocols import fl_messages as fm

app = ClientApp(mods=[secagg_train.optional_secaggplus_mod])  # a no-op unless the server runs SecAgg+


# --------------------------------------------------------------------------- Flower handlers


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Hello: tell the server which client (user) this node is; it keys all per-client state by it."""
    settings, _ = settings_from(msg, context)
    pid = partition_id(context)
    client_id = client_id_for(settings, pid)
    return Message(fm.make_recorddict(config={"client_id": client_id, "partition_id": pid}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    settings, cfg = settings_from(msg, context)
    server_round = int(cfg.get("server_round", msg.metadata.group_id or 0))
    pid = partition_id(context)
    client_id = client_id_for(settings, pid)
    state = load_state(context, settings, client_id)
    blob, metrics, state = run_train(settings, fm.read_patch(cfg), server_round, pid, client_id, state)
    save_state(context, settings, client_id, state)
    if isinstance(blob, np.ndarray):  # SecAgg+: the mod masks these values
        return secagg_train.fitres_reply(msg, blob, {**metrics, "client_id": client_id})
    content = fm.make_recorddict(
        update={"blob": blob, "client_id": client_id, "version": int(cfg["target_version"])}, metrics=metrics
    )
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Validation loss of the current broadcast adapter on this client's private val split."""
    settings, cfg = settings_from(msg, context)
    pid = partition_id(context)
    client_id = client_id_for(settings, pid)
    state = load_state(context, settings, client_id)
    lm, broadcast = adopt_broadcast(settings, fm.read_patch(cfg), state)
    save_state(context, settings, client_id, state)
    metrics = evaluate_broadcast(settings, lm, broadcast, client_id)
    content = fm.make_recorddict(update={"client_id": client_id}, metrics=metrics)
    return Message(content, reply_to=msg)
