"""SecAgg+ in the federated LoRA run: the real adapter updates at a shared random support, summed by
Flower's SecAggPlusWorkflow, give the same mean as the same values sent in the clear."""

from __future__ import annotations

import numpy as np
import pytest

from fedcogen.client import fl_clientapp
from fedcogen.run_config import FLSettings
from fedcogen.secagg import flatten, release_at_support, round_support
from fedcogen.server.fl_serverapp import FederatedServer
from fedcogen.simulations.federation import LoopbackGrid, SimulationConfig

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
