"""Measures, in a real run, how inexact separate A/B averaging is (``lora_mode = "lora"``).

Why here: FedAvg on the adapter dict averages A and B apart, so the server applies
``s * mean(B_i) @ mean(A_i)`` where the clients asked for ``mean(s * B_i @ A_i)``. The server
already holds every accepted update of the round (decoded, validated), so it can measure that gap
at no extra training cost: each client's adapter is the global adapter plus its update, and the
error is reported relative to the change the clients asked for this round,
``||W(mean adapter) - mean W(adapter_i)||_F / ||mean W(adapter_i) - W(global)||_F`` over all modules.
For ``freeze_a`` and ``core`` the error is zero by construction (tests check it), so nothing is kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedcogen.lora_exact import aggregation_error, module_names, weight_changes
from fedcogen.protocols.codecs import sparse_codec as codec

MAX_KEPT = 8  # per round; beyond that the probe is skipped (memory: one dense adapter per client)


def keeps_updates(lora_mode: str, clients: int) -> bool:
    return lora_mode == "lora" and clients <= MAX_KEPT


def ab_averaging_error(scale: float, global_adapter: Mapping[str, np.ndarray],
                       updates: Sequence[tuple[Mapping[str, codec.SparseTensor], float]]) -> dict[str, float]:
    """Relative error of separate A/B averaging for this round's accepted ``(update, weight)`` pairs.

    ``scale`` is LoRA's ``alpha / r``; in ``lora`` mode A and B both come from the adapters, so the
    server needs no model weights for this (it holds none: shapes come from the skeleton).
    """
    if len(updates) < 2:
        return {}
    clients = []
    for sparse, _w in updates:
        dense = codec.densify(sparse)
        clients.append({k: np.asarray(v, np.float64) + (dense[k] if k in dense else 0.0)
                        for k, v in global_adapter.items()})
    factors = {mod: {"A": global_adapter[f"{mod}.lora_A.weight"], "B": global_adapter[f"{mod}.lora_B.weight"],
                     "scale": float(scale)} for mod in module_names(global_adapter)}
    err = aggregation_error(clients, factors, "lora", [w for _, w in updates])
    before = weight_changes(global_adapter, factors, "lora")
    weights = np.asarray([w for _, w in updates], np.float64)
    weights = weights / weights.sum()
    per_client = [weight_changes(c, factors, "lora") for c in clients]
    change_sq = 0.0
    for mod in before:
        mean_w = sum(wi * pc[mod] for wi, pc in zip(weights, per_client, strict=True))
        change_sq += float(np.sum((mean_w - before[mod]) ** 2))
    change = float(np.sqrt(change_sq))
    return {"ab_avg_error_rel_change": err["error_norm"] / change if change > 0 else 0.0,
            "ab_avg_error_rel_weight": err["rel_error"]}
