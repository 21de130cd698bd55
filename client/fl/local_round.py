"""One round of a device's federated work, independent of Flower (the ClientApp and benchmarks call it).

Train: rebuild the broadcast adapter from the server's patch, train locally on the private partition,
compress the update (:mod:`fedcogen.client.fl.update_compression`) or release it for SecAgg+.
Evaluate: adopt the broadcast and measure its validation loss on the private partition.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedcogen.client.fl import secagg_train
from fedcogen.client.fl.client_state import ClientState
from fedcogen.client.fl.lora_training import eval_loss, train_local
from fedcogen.client.fl.node_data import encoded_split
from fedcogen.client.fl.update_compression import compress_update
from fedcogen.lora_adapter import adapter_digest, adapter_sub, get_adapter, lora_model, lora_spec, set_adapter
from fedcogen.protocols import fl_messages as fm
from fedcogen.protocols.codecs import sparse_codec as codec
from fedcogen.protocols.privacy import dp
from fedcogen.run_config import FLSettings


def client_seed(seed: int, server_round: int, partition_id: int) -> int:
    """Independent, reproducible seed per (run seed, round, client): local training only, never DP noise."""
    return int(np.random.SeedSequence([seed, server_round, partition_id, 17]).generate_state(1)[0])


def rebuild_broadcast(lm: Any, state: ClientState, patch: fm.Patch) -> dict[str, np.ndarray]:
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


def run_train(settings: FLSettings, patch: fm.Patch, server_round: int, partition_id: int,
              client_id: str, state: ClientState) -> tuple[bytes | np.ndarray, dict[str, float], ClientState]:
    """One round of client work, independent of Flower (the ClientApp and benchmarks call it).

    Returns the codec blob, or under ``secagg = "secaggplus"`` the float values at the round's shared
    support (SecAgg+ masks and sums them).
    """
    lm = lora_model(settings.model, settings.seed, lora_spec(settings), settings.device)
    broadcast = rebuild_broadcast(lm, state, patch)
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
        blob, new_residual = compress_update(update, state.residual_before(server_round), settings, rng, schema,
                                             server_round=server_round)
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


def adopt_broadcast(settings: FLSettings, patch: fm.Patch, state: ClientState) -> tuple[Any, dict[str, np.ndarray]]:
    """Load the model and rebuild this round's broadcast adapter into ``state`` (the evaluate message)."""
    lm = lora_model(settings.model, settings.seed, lora_spec(settings), settings.device)
    broadcast = rebuild_broadcast(lm, state, patch)
    state.copies[patch.target_version] = broadcast
    return lm, broadcast


def evaluate_broadcast(settings: FLSettings, lm: Any, broadcast: dict[str, np.ndarray],
                       client_id: str) -> dict[str, float]:
    """Validation loss of the broadcast adapter on this client's private val split."""
    data = encoded_split(settings, client_id, "val", lm.tokenizer)
    set_adapter(lm, broadcast)
    loss, n_tok = eval_loss(lm, data, batch_size=max(1, settings.batch_size))
    return {fm.NUM_EXAMPLES: len(data), "eval_loss": loss, "eval_tokens": n_tok}
