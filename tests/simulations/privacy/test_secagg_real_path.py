"""SecAgg+ in the federated LoRA run: the real adapter updates at a shared random support, summed by
Flower's SecAggPlusWorkflow, give the same mean as the same values sent in the clear."""

from __future__ import annotations

import numpy as np
import pytest

from fedcogen.client.fl import fl_clientapp, secagg_train
from fedcogen.protocols.codecs import sparse_codec as codec
from fedcogen.run_config import FLSettings
from fedcogen.secagg import flatten, release_at_support, round_support, unflatten
from fedcogen.server.fl.fl_serverapp import FederatedServer
from fedcogen.simulations.federation.federation import LoopbackGrid, SimulationConfig

pytestmark = pytest.mark.timeout(600)

BASE = dict(model="tiny", num_clients=4, clients_per_round=4, rounds=1, local_steps=2, batch_size=2,
            max_seq_len=40, lr=5e-3, seed=9, density=0.05, quant="fp32")


def _run(tmp_path, name: str, **kw) -> tuple[FederatedServer, dict]:
    cfg = SimulationConfig.from_dict({**BASE, "out_dir": str(tmp_path / name), "data_dir": str(tmp_path / "data"),
                                      "engine": "loopback", **kw})
    server = FederatedServer(LoopbackGrid(fl_clientapp.app, cfg.run.num_clients, seed=cfg.run.seed), cfg.settings())
    return server, server.run()


def test_secaggplus_mean_equals_the_plain_sparse_mean(tmp_path) -> None:
    secure, res_s = _run(tmp_path, "secaggplus", secagg="secaggplus")
    plain, res_p = _run(tmp_path, "plain", secagg="plain")
    assert res_s["completed_rounds"] == res_p["completed_rounds"] == 1
    assert res_s["rounds"][1]["accepted"] == 4 and not res_s["rounds"][1]["failures"]
    g_s, g_p = flatten(secure.state.global_adapter), flatten(plain.state.global_adapter)
    init = flatten(secure.layout.initial)
    assert np.abs(g_p - init).max() > 1e-4  # training moved the adapter ...
    # ... and SecAgg+ (fixed point, 2^22 levels over +-1) reproduced the plain mean to its resolution
    # (one round: a later round would start from broadcasts that differ by that resolution)
    np.testing.assert_allclose(g_s, g_p, rtol=0, atol=1e-6)
    # only the shared supports changed: data-independent positions, k = density * dim per round
    s = FLSettings(**{k: v for k, v in BASE.items()})
    moved = np.flatnonzero(g_s != init)
    assert set(moved.tolist()) <= set(round_support(s, 1, g_s.size).tolist())
    # every SecAgg+ stage went through the ledger; the download is the sparse broadcast
    phases = {(r["phase"], r["direction"]) for r in _ledger(tmp_path / "secaggplus")}
    assert {("secagg_setup", "down"), ("secagg_share_keys", "up"), ("train", "up"), ("secagg_unmask", "up")} <= phases
    assert res_s["bytes"]["all"] > res_p["bytes"]["all"]  # key exchange and masks cost bytes ...
    dense = 4 * g_s.size
    assert res_s["bytes"]["train_down"] < 4 * dense  # ... but no dense model goes down


def _ledger(folder) -> list[dict]:
    import json

    return json.loads((folder / "ledger.json").read_text())["entries"]


def test_excess_beyond_the_secagg_range_goes_back_into_the_residual() -> None:
    s = FLSettings(density=0.5, secagg="secaggplus", secagg_range=0.1)
    corrected = np.array([0.5, -0.3, 0.05, 0.0, 2.0, -0.01], np.float32)
    support = np.array([0, 1, 2, 4])
    vals, residual = release_at_support(corrected, support, s, np.random.default_rng(0))
    np.testing.assert_allclose(vals, [0.1, -0.1, 0.05, 0.1])
    np.testing.assert_allclose(residual, [0.4, -0.2, 0.0, 0.0, 1.9, -0.01], atol=1e-7)
    np.testing.assert_allclose(residual[support] + vals, corrected[support])  # nothing lost


def test_secaggplus_warm_up_round_sums_every_entry(tmp_path) -> None:
    """A warm-up round (density 1) under SecAgg+: server and clients agree on the round's full support."""
    secure, res = _run(tmp_path, "warm", secagg="secaggplus", warmup_rounds=1, rounds=2)
    assert res["completed_rounds"] == 2 and all(not r["failures"] for r in res["rounds"][1:])
    assert np.count_nonzero(flatten(secure.state.global_adapter) != flatten(secure.layout.initial)) > 0.5 * sum(
        int(np.prod(v)) for v in secure.shapes.values())  # round 1 moved (nearly) every entry


def test_plain_release_feeds_the_quantisation_error_back() -> None:
    """``secagg = "plain"`` int4: what the blob does not carry of the released values stays in the residual."""
    shapes = {"a.lora_A.weight": (4, 8), "a.lora_B.weight": (8, 4)}
    s = FLSettings(density=0.5, secagg="plain", quant="int4")
    rng = np.random.default_rng(3)
    corrected = rng.normal(size=64).astype(np.float32)
    support = round_support(s, 1, 64)
    values, residual = release_at_support(corrected, support, s, rng)
    blob, fed = secagg_train.plain_release(values, support, shapes, s, unflatten(residual, shapes))
    sent = flatten({**{k: np.zeros(v, np.float32) for k, v in shapes.items()},
                    **codec.densify(codec.decode_sparse(blob, shapes))})
    assert np.abs(sent - values_at(values, support, 64)).max() > 1e-3  # int4 loses something ...
    np.testing.assert_allclose(sent + flatten(fed), corrected, atol=1e-6)  # ... and the residual keeps it


def values_at(values: np.ndarray, support: np.ndarray, dim: int) -> np.ndarray:
    out = np.zeros(dim, np.float32)
    out[support] = values
    return out


def test_client_dp_noise_is_never_clipped_by_secagg() -> None:
    """Client-side DP under SecAgg+: released values stay inside +-secagg_range with the noise on them, so the
    sum carries an unclipped Gaussian; a range too small for the noise is refused by the run config."""
    s = FLSettings(density=0.5, secagg="secaggplus", secagg_range=1.0, dp_mode="client", dp_clip_norm=1.0,
                   dp_noise_multiplier=0.3, clients_per_round=4)
    rng = np.random.default_rng(0)
    for seed in range(50):
        corrected = np.random.default_rng(seed).normal(0, 0.01, 400).astype(np.float32)
        corrected[0] = 50.0  # after the L2 clip this one value is ~C = the range: no room left without headroom
        vals, _ = release_at_support(corrected, np.arange(0, 400, 2), s, rng)
        assert np.abs(vals).max() < s.secagg_range
    with pytest.raises(ValueError, match="secagg_range"):
        FLSettings(secagg="secaggplus", secagg_range=1.0, dp_mode="client", dp_noise_multiplier=1.0,
                   dp_clip_norm=1.0, clients_per_round=3).validate()
