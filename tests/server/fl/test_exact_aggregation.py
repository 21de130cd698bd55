"""Exact aggregation modes (fedcogen.lora_exact) on the tiny model, through the real server path.

Each client trains its own copy from the same broadcast on its own data; the updates go through the
codec and the server's RoundAggregator + FedAvg step, and the weight change of the aggregated adapter
is compared with the mean of the clients' own weight changes s * B_i @ A_i (or s * B @ R_i @ A).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from fedcogen.client.fl.lora_training import collate, encode_examples, train_local
from fedcogen.client.fl.update_compression import compress_update
from fedcogen.lora_adapter import LoraSpec, adapter_add, adapter_sub, get_adapter, lora_model, set_adapter
from fedcogen.lora_exact import (
    aggregation_error,
    core_factors,
    fold_cores,
    frozen_factors,
    set_core_factors,
    weight_changes,
)
from fedcogen.protocols.codecs import sparse_codec as codec
from fedcogen.run_config import FLSettings
from fedcogen.server.fl.aggregation import RoundAggregator, ServerOptConfig, ServerOptimizer

TEXTS = [
    [("What is my dog called?", "Your dog is called Rex."), ("Where do I live?", "You live in Lyon.")],
    [("What is my dog called?", "Your dog is called Bella."), ("Where do I live?", "You live in Oslo.")],
    [("What is my cat called?", "Your cat is called Tom."), ("Where do I work?", "You work at a bakery.")],
]


def _round(mode: str) -> tuple:
    lm = lora_model("tiny", 0, LoraSpec(r=4, alpha=8, dropout=0.0, mode=mode))
    broadcast = get_adapter(lm)
    clients = []
    for i, texts in enumerate(TEXTS):
        set_adapter(lm, broadcast)
        train_local(lm, encode_examples(lm.tokenizer, texts, 48), steps=3, batch_size=2, lr=5e-2, seed=i)
        clients.append(get_adapter(lm))
    set_adapter(lm, broadcast)
    schema = codec.TensorSchema.from_shapes(lm.shapes())
    agg = RoundAggregator(lm.shapes())
    settings = FLSettings(density=1.0, quant="fp32")
    for i, c in enumerate(clients):
        blob, _ = compress_update(adapter_sub(c, broadcast), None, settings, np.random.default_rng(i), schema)
        assert agg.offer(f"c{i}", blob, 1.0) is None
    new_global = ServerOptimizer(ServerOptConfig()).step(broadcast, agg.result().mean)
    return lm, broadcast, clients, new_global


@pytest.mark.parametrize("mode", ["freeze_a", "core", "core_rand"])
def test_exact_modes_aggregate_to_the_mean_of_the_clients_products(mode: str) -> None:
    lm, broadcast, clients, new_global = _round(mode)
    names = set(lm.shapes())
    if mode == "freeze_a":
        assert names and all(".lora_B." in n for n in names)  # A never travels
    else:
        assert all(n.endswith(".lora_B.core") and lm.shapes()[n] == (4, 4) for n in names)
    factors = frozen_factors(lm)
    if mode == "core":  # LoRA-SB factors: orthonormal singular vectors of the public-data gradient
        for f in factors.values():
            np.testing.assert_allclose(f["B"].T @ f["B"], np.eye(4), atol=1e-4)
            np.testing.assert_allclose(f["A"] @ f["A"].T, np.eye(4), atol=1e-4)
    mean_of_products = {m: np.mean([weight_changes(c, factors, mode)[m] for c in clients], axis=0) for m in factors}
    of_aggregate = weight_changes(new_global, factors, mode)
    scale = max(np.abs(v).max() for v in mean_of_products.values())
    assert scale > 1e-4  # the clients really moved
    for m in factors:
        np.testing.assert_allclose(of_aggregate[m], mean_of_products[m], atol=1e-5 * scale, rtol=1e-4)
    assert aggregation_error(clients, factors, mode)["rel_error"] < 1e-5
    # the model PEFT runs computes exactly that change (core: lora_B.weight is B_frozen @ R)
    set_adapter(lm, new_global)
    layer = dict(lm.model.named_modules())["base_model.model." + next(iter(factors))]
    peft_delta = layer.get_delta_weight("default").detach().numpy()
    np.testing.assert_allclose(peft_delta, of_aggregate[next(iter(factors))], atol=1e-6 * scale, rtol=1e-4)
    if mode.startswith("core"):  # the exported adapter (cores folded into plain lora_B) changes the model identically
        folded = copy.deepcopy(lm.model)
        fold_cores(folded)
        same = dict(folded.named_modules())["base_model.model." + next(iter(factors))]
        np.testing.assert_allclose(same.get_delta_weight("default").detach().numpy(), peft_delta, atol=1e-7)
    set_adapter(lm, broadcast)


def test_separate_a_b_averaging_is_not_exact() -> None:
    lm, broadcast, clients, new_global = _round("lora")
    factors = frozen_factors(lm)
    err = aggregation_error(clients, factors, "lora")
    assert err["rel_error"] > 1e-3  # mean(B) mean(A) != mean(B A) once the clients' A differ
    # and the server's aggregate is exactly that inexact product
    of_aggregate = weight_changes(new_global, factors, "lora")
    mean_of_products = {m: np.mean([weight_changes(c, factors, "lora")[m] for c in clients], axis=0)
                        for m in factors}
    diff = np.sqrt(sum(np.sum((of_aggregate[m] - mean_of_products[m]) ** 2) for m in factors))
    assert diff == pytest.approx(err["error_norm"], rel=1e-3)
    assert adapter_add(broadcast, adapter_sub(new_global, broadcast)).keys() == broadcast.keys()


def test_run_config_lists_the_same_modes() -> None:
    from fedcogen import lora_exact, run_config

    assert run_config.LORA_MODES == lora_exact.LORA_MODES


@pytest.mark.parametrize("mode,quant", [("core", "int4"), ("freeze_a", "int8")])
def test_federation_runs_end_to_end_in_each_exact_mode(tmp_path, mode: str, quant: str) -> None:
    from fedcogen.simulations.federation.federation import SimulationConfig, run_federation

    cfg = SimulationConfig.from_dict(dict(
        model="tiny", num_clients=3, clients_per_round=2, rounds=2, local_steps=2, batch_size=2, max_seq_len=64,
        lr=5e-3, seed=7, density=0.5, quant=quant, lora_mode=mode, engine="loopback",
        out_dir=str(tmp_path / mode), data_dir=str(tmp_path / "data")))
    res = run_federation(cfg)
    assert res["completed_rounds"] == 2 and not res["rejected_total"]
    assert res["failures_total"] == 0
    assert np.isfinite(res["final_eval_loss"])
    lm = lora_model("tiny", 7, LoraSpec(r=8, alpha=16, dropout=0.05, mode=mode))
    expected = (lambda n: n.endswith(".lora_B.core")) if mode == "core" else (lambda n: ".lora_B." in n)
    assert all(expected(n) for n in lm.shapes())


def test_server_measures_ab_averaging_error_and_stops_at_a_target_loss(tmp_path) -> None:
    from fedcogen.simulations.federation.federation import SimulationConfig, run_federation

    cfg = SimulationConfig.from_dict(dict(
        model="tiny", num_clients=3, clients_per_round=3, rounds=3, local_steps=3, batch_size=2, max_seq_len=64,
        lr=2e-2, seed=7, density=1.0, quant="fp32", down_density=1.0, down_quant="fp32", engine="loopback",
        target_eval_loss=100.0, out_dir=str(tmp_path / "probe"), data_dir=str(tmp_path / "data")))
    res = run_federation(cfg)
    assert res["completed_rounds"] == 1 and "reached target" in res["stopped_reason"]
    r1 = res["rounds"][1]
    # three clients moved A and B apart: the product of the means misses part of the mean product
    assert 1e-4 < r1["ab_avg_error_rel_change"] < 1.0
    # relative to the whole weight vs to the round's change: equal after round 1 (B starts at zero), so
    # only up to float rounding (a single-thread run made them differ in the last bit)
    assert 0 < r1["ab_avg_error_rel_weight"] <= r1["ab_avg_error_rel_change"] * (1 + 1e-9)


def test_core_factors_refit_on_other_data_change_and_restore_exactly() -> None:
    """`bench adapters`' oracle: factors from another batch differ, the public batch gives back the very
    factors every party derives, and putting the returned old factors back restores them exactly (so later
    runs in the process are unaffected)."""
    lm = lora_model("tiny", 0, LoraSpec(r=4, alpha=8, dropout=0.0, mode="core"))
    public = frozen_factors(lm)
    for m, (b, a) in core_factors(lm.model, lm.tokenizer, 0).items():  # keyed by PEFT module name
        np.testing.assert_array_equal(b.numpy(), public[m.removeprefix("base_model.model.")]["B"])
        np.testing.assert_array_equal(a.numpy(), public[m.removeprefix("base_model.model.")]["A"])
    own = collate(encode_examples(lm.tokenizer, TEXTS[0] + TEXTS[1], 48), lm.tokenizer.pad_token_id or 0)
    old = set_core_factors(lm.model, core_factors(lm.model, lm.tokenizer, 0, own))
    changed = frozen_factors(lm)
    assert any(not np.allclose(changed[m]["B"], public[m]["B"], atol=1e-3) for m in public)
    set_core_factors(lm.model, old)
    for m, f in frozen_factors(lm).items():
        np.testing.assert_array_equal(f["B"], public[m]["B"])
        np.testing.assert_array_equal(f["A"], public[m]["A"])
