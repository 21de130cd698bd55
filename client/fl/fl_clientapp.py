"""Flower ClientApp (Message API, flwr 1.41): federated sparse-LoRA training on a device.

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

import dataclasses
import logging
import os
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedcogen import dataset as sd
from fedcogen.client.fl import secagg_train
from fedcogen.client.fl.client_state import ClientState, load_state, save_state
from fedcogen.client.fl.lora_training import encode_examples, eval_loss, train_local
from fedcogen.lora_adapter import adapter_digest, adapter_sub, get_adapter, lora_model, lora_spec, set_adapter
from fedcogen.protocols import fl_messages as fm
from fedcogen.protocols.codecs import sparse_codec as codec
from fedcogen.protocols.privacy import dp
from fedcogen.protocols.privacy.dp_release import encode_within_clip
from fedcogen.run_config import FLSettings

log = logging.getLogger(__name__)

ENCODED_CACHE_CLIENTS = 64  # tokenised splits kept per process (LRU): memory must not grow with clients

app = ClientApp(mods=[secagg_train.optional_secaggplus_mod])  # a no-op unless the server runs SecAgg+


# --------------------------------------------------------------------------- data and seeds


def federation_for(settings: FLSettings) -> Any:
    """Load the synthetic federation from ``data_dir``, generating it (deterministically) if missing.

    Generation writes to a temporary sibling folder that is renamed into place, so concurrent
    processes (Ray workers, the server) never read a half-written folder.
    """

    if not settings.data_dir:
        raise ValueError("run config 'data_dir' is empty: set the folder of the synthetic federation")
    folder = Path(settings.data_dir)
    if not folder.exists() and str(folder) in _NODE_LOCAL_DATA:
        # a device's own data folder is its data: never fabricate a federation in its place
        raise FileNotFoundError(f"this node's data-dir {folder} (from its node config) does not exist")
    if not folder.exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        fed = sd.generate_federation(sd.FederationConfig(n_users=settings.num_clients, seed=settings.seed))
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        sd.write_federation(fed, tmp)
        try:
            os.rename(tmp, folder)
        except OSError:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)  # another process won the race; its copy is identical
    fed = _load_federation(str(folder))
    n_users = len(sd.user_ids(fed))
    if n_users < settings.num_clients:
        raise ValueError(f"federation in {folder} has {n_users} users but num_clients={settings.num_clients}: "
                         "use another data_dir or fewer clients")
    return fed


_FED_CACHE: dict[str, Any] = {}
_ENC_CACHE: OrderedDict[tuple, Any] = OrderedDict()


def _load_federation(folder: str) -> Any:

    if folder not in _FED_CACHE:
        _FED_CACHE[folder] = sd.load_federation(folder)
    return _FED_CACHE[folder]


def client_id_for(settings: FLSettings, partition_id: int) -> str:
    """Partition id -> user id of the federation (sorted user list, so every process agrees)."""

    users = sd.user_ids(federation_for(settings))
    if not 0 <= partition_id < len(users):
        raise ValueError(f"partition-id {partition_id} out of range: federation has {len(users)} users")
    return users[partition_id]


def encoded_split(settings: FLSettings, client_id: str, split: str, tokenizer: Any) -> list[Any]:
    """Tokenised (prompt, target) pairs of one client's split, cached per process."""

    key = (settings.data_dir, settings.model, client_id, split, settings.max_seq_len, settings.history_examples,
           settings.fact_swaps)
    if key not in _ENC_CACHE:
        examples = sd.client_examples(federation_for(settings), client_id, split, history=settings.history_examples,
                                       fact_swaps=settings.fact_swaps)
        _ENC_CACHE[key] = encode_examples(tokenizer, examples, settings.max_seq_len)
        while len(_ENC_CACHE) > ENCODED_CACHE_CLIENTS:
            _ENC_CACHE.popitem(last=False)
    _ENC_CACHE.move_to_end(key)
    return _ENC_CACHE[key]


def client_seed(seed: int, server_round: int, partition_id: int) -> int:
    """Independent, reproducible seed per (run seed, round, client): local training only, never DP noise."""
    return int(np.random.SeedSequence([seed, server_round, partition_id, 17]).generate_state(1)[0])


# Node-config keys a device owns: its data, its state folder, its model and its accelerator come from its
# own configuration (``--node-config 'data-dir=... state-dir=... model=... device=cuda'``), never from the server.
NODE_LOCAL_KEYS: dict[str, str] = {"data-dir": "data_dir", "state-dir": "client_state_dir", "model": "model",
                                   "device": "device"}
_NODE_LOCAL_DATA: set[str] = set()  # data folders named by a node config (never generated)


def _settings_from(msg: Message, context: Context) -> tuple[FLSettings, dict[str, Any]]:
    """Settings = dataclass defaults + what the server sent, except the node-local keys.

    The server is the source of truth for training hyper-parameters (so client and server never
    disagree), but not for where the device reads its data, keeps its state or which model it
    loads: when the node config sets ``data-dir`` / ``state-dir`` / ``model`` / ``device``, those win and any
    server-sent value is ignored. Without them (the simulation engine) the run config's values,
    which the server forwards, are used.
    """
    cfg = fm.config_of(msg.content, secagg_train.config_key(msg.content))
    settings = FLSettings.from_client_config(cfg)
    node = context.node_config
    local = {field: str(node[key]) for key, field in NODE_LOCAL_KEYS.items() if key in node and str(node[key])}
    if local:
        ignored = {f: getattr(settings, f) for f in local if getattr(settings, f) != local[f]}
        if ignored:
            log.info("using this node's own %s; ignoring the server's %s", sorted(local), ignored)
        settings = dataclasses.replace(settings, **local)
        if "data_dir" in local:
            _NODE_LOCAL_DATA.add(str(Path(local["data_dir"])))
    return settings, cfg


def _partition_id(context: Context) -> int:
    pid = context.node_config.get("partition-id")
    if pid is None:
        raise ValueError("node config has no 'partition-id' (start the SuperNode with --node-config "
                         "'partition-id=N num-partitions=M')")
    return int(pid)


def _rebuild_broadcast(lm: Any, state: ClientState, patch: fm.Patch) -> dict[str, np.ndarray]:
    state.forget_newer(patch.target_version)
    if patch.kind == fm.PATCH_FULL or patch.base_version == 0 and 0 not in state.copies:
        base = lm.initial
    elif patch.base_version in state.copies:
        base = state.copies[patch.base_version]
    else:
        raise ValueError(f"stale_broadcast: server patches from version {patch.base_version}, client holds "
                         f"{sorted(state.copies)}")
    adapter = fm.apply_patch(base, patch.kind, patch.blob, lm.shapes())
    digest = adapter_digest(adapter)
    if digest != patch.digest:
        raise ValueError(f"digest_mismatch: rebuilt broadcast v{patch.target_version} has sha256 {digest[:12]}, "
                         f"server says {patch.digest[:12]}")
    return adapter


# --------------------------------------------------------------------------- core (callable without Flower)


def compress_update(
    update: Mapping[str, np.ndarray],
    residual: Mapping[str, np.ndarray] | None,
    settings: FLSettings,
    rng: np.random.Generator,
    schema: codec.TensorSchema | None = None,
) -> tuple[bytes, dict[str, np.ndarray]]:
    """Error-feedback top-k (+ DP clip/noise) + encode; returns (blob, new residual).

    The residual is ``corrected - decoded(blob)``: what the server will actually see is subtracted,
    so with DP on, no part of the update reaches the server without passing the clip. In client-mode
    DP the added noise is taken back out of that difference (``released - clipped``): the residual
    carries clipping and quantisation leftovers, never the noise, which would otherwise feed back
    into the next round's update with the opposite sign. In server-mode DP the blob is encoded so
    that the update the server *decodes* (after value quantisation) is within the clip norm.
    ``schema`` (default: the update's own tensors) is the adapter schema the server decodes with.
    """
    if schema is None:
        schema = codec.TensorSchema.from_shapes({k: np.shape(v) for k, v in update.items()})
    cfg = codec.CodecConfig(
        density=settings.density, scope=settings.scope, quant=settings.quant, index_coding=settings.index_coding
    )
    corrected = {k: np.asarray(v, np.float32) + (residual[k] if residual and k in residual else 0.0)
                 for k, v in update.items()}
    corrected = {k: np.asarray(v, np.float32) for k, v in corrected.items()}
    sparse = codec.topk_sparsify(corrected, cfg)
    if settings.dp_mode != "none":
        dpc = dp.DPConfig(mode=settings.dp_mode, clip_norm=settings.dp_clip_norm,
                          noise_multiplier=settings.dp_noise_multiplier, delta=settings.dp_delta,
                          clients_per_round=max(1, settings.clients_per_round))
        released, clipped = dp.privatize_sparse_split(sparse, dpc, rng)
        released_dense, clipped_dense = codec.densify(released), codec.densify(clipped)
        noise = {k: released_dense[k] - clipped_dense[k] for k in released_dense}
        sparse = released
    else:
        noise = {}
    if settings.dp_mode == "server":
        blob = encode_within_clip(sparse, cfg, settings.dp_clip_norm, schema)
    else:
        blob = codec.encode_sparse(sparse, cfg, schema)
    sent = codec.densify(codec.decode_sparse(blob, schema))
    new_residual = {k: (corrected[k] - sent.get(k, 0.0) + noise.get(k, 0.0)).astype(np.float32)
                    for k in corrected}
    return blob, new_residual


def run_train(settings: FLSettings, patch: fm.Patch, server_round: int, partition_id: int,
              client_id: str, state: ClientState) -> tuple[bytes | np.ndarray, dict[str, float], ClientState]:
    """One round of client work, independent of Flower (the ClientApp and benchmarks call it).

    Returns the codec blob, or under ``secagg = "secaggplus"`` the float values at the round's shared
    support (SecAgg+ masks and sums them).
    """
    lm = lora_model(settings.model, settings.seed, lora_spec(settings), settings.device)
    broadcast = _rebuild_broadcast(lm, state, patch)
    data = encoded_split(settings, client_id, "train", lm.tokenizer)
    set_adapter(lm, broadcast)
    seed = client_seed(settings.seed, server_round, partition_id)
    result = train_local(lm, data, steps=settings.local_steps, batch_size=settings.batch_size,
                         lr=settings.lr, seed=seed)
    update = adapter_sub(get_adapter(lm), broadcast)
    # DP noise from the OS CSPRNG: the run seed is in every client's config, noise drawn from it could be
    # subtracted by anyone; without DP the generator draws nothing and the run stays reproducible
    rng = dp.secret_rng() if settings.dp_mode != "none" else np.random.default_rng(seed)
    schema = codec.TensorSchema.from_shapes(lm.shapes())
    values = None
    if settings.secagg == "off":
        blob, new_residual = compress_update(update, state.residual_before(server_round), settings, rng, schema)
    else:
        values, support, new_residual = secagg_train.shared_release(
            update, state.residual_before(server_round), settings, server_round, rng)
        blob = b""  # secaggplus: SecAgg+ masks the float values themselves
        if settings.secagg == "plain":
            blob, new_residual = secagg_train.plain_release(values, support, lm.shapes(), settings, new_residual)
    state.copies[patch.target_version] = broadcast
    state.residuals[server_round] = new_residual
    stats = codec.blob_stats(blob, schema) if blob else {"k": int(values.size), "tensors": []}
    metrics = {
        fm.NUM_EXAMPLES: len(data),
        "train_loss": result.loss,
        "steps": result.steps,
        "tokens": result.tokens,
        "target_tokens": result.target_tokens,
        "train_seconds": result.seconds,
        "tokens_per_s": result.tokens_per_s,
        "update_bytes": len(blob),
        "sent_entries": stats["k"],
        # index bits actually used vs the information bound log2 C(n, k), for the comm benchmark
        "index_bits": sum(t["index_bits"] for t in stats["tensors"] if 0 < t["k"] < t["n"]),
        "bound_bits": sum(t["bound_bits"] for t in stats["tensors"] if 0 < t["k"] < t["n"]),
    }
    if settings.secagg == "secaggplus":
        metrics["update_bytes"] = 4 * int(values.size)  # what SecAgg+ masks: k float values, no indices
        return values, metrics, state
    return blob, metrics, state


# --------------------------------------------------------------------------- Flower handlers


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Hello: tell the server which client (user) this node is; it keys all per-client state by it."""
    settings, _ = _settings_from(msg, context)
    pid = _partition_id(context)
    client_id = client_id_for(settings, pid)
    return Message(fm.make_recorddict(config={"client_id": client_id, "partition_id": pid}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    settings, cfg = _settings_from(msg, context)
    server_round = int(cfg.get("server_round", msg.metadata.group_id or 0))
    pid = _partition_id(context)
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
    settings, cfg = _settings_from(msg, context)
    pid = _partition_id(context)
    client_id = client_id_for(settings, pid)
    state = load_state(context, settings, client_id)
    lm = lora_model(settings.model, settings.seed, lora_spec(settings), settings.device)
    patch = fm.read_patch(cfg)
    broadcast = _rebuild_broadcast(lm, state, patch)
    state.copies[patch.target_version] = broadcast
    save_state(context, settings, client_id, state)
    data = encoded_split(settings, client_id, "val", lm.tokenizer)
    set_adapter(lm, broadcast)
    loss, n_tok = eval_loss(lm, data, batch_size=max(1, settings.batch_size))
    metrics = {fm.NUM_EXAMPLES: len(data), "eval_loss": loss, "eval_tokens": n_tok}
    content = fm.make_recorddict(update={"client_id": client_id}, metrics=metrics)
    return Message(content, reply_to=msg)
