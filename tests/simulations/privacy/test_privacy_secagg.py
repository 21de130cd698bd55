"""Sparse SecAgg+ (shared random support) in the real Flower simulation engine.

The server must end up with the plain mean at the public support (to SecAgg+ quantisation error)
while every vector it received from a single client is masked (unrelated to any client's input).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fedcogen.protocols.privacy.dp import DPConfig
from fedcogen.secagg import SecAggRunConfig, round_seed, secure_values, shared_support
from fedcogen.simulations.privacy.secagg_experiment import run_secagg, synthetic_update
from fedcogen.simulations.privacy.secagg_server import Recorder

pytestmark = pytest.mark.slow

BASE = SecAggRunConfig(mode="sparse", dim=3000).with_run(num_clients=3, clients_per_round=3, rounds=2, density=0.05,
                                                           seed=3)


def _expected_sparse(cfg: SecAggRunConfig) -> list[tuple[np.ndarray, np.ndarray, list[np.ndarray]]]:
    """Replay the clients locally: per round (support, plain mean of sent values, each client's values)."""
    residual = {p: np.zeros(cfg.dim, np.float32) for p in range(cfg.run.num_clients)}
    out = []
    for rnd in range(1, cfg.run.rounds + 1):
        support = shared_support(round_seed(cfg.run.seed, rnd), cfg.dim, cfg.k)
        sent = []
        for p in range(cfg.run.num_clients):
            corrected = synthetic_update(cfg.run.seed, p, rnd, cfg.dim) + residual[p]
            vals, residual[p] = secure_values(corrected, support, DPConfig(mode="none"), np.random.default_rng(0))
            sent.append(vals)
        out.append((support, np.mean(sent, axis=0), sent))
    return out


def test_shared_support_is_public_and_deterministic():
    a = shared_support(11, 1000, 50)
    assert np.array_equal(a, shared_support(11, 1000, 50))
    assert len(np.unique(a)) == 50 and a.min() >= 0 and a.max() < 1000
    assert not np.array_equal(a, shared_support(12, 1000, 50))
    with pytest.raises(ValueError):
        shared_support(1, 10, 11)


def test_secure_values_residual_and_clip():
    corrected = np.arange(10, dtype=np.float32)
    support = np.array([2, 7])
    vals, res = secure_values(corrected, support, DPConfig(mode="client", clip_norm=1.0), np.random.default_rng(0))
    assert np.linalg.norm(vals) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(res[support] + vals, corrected[support], rtol=1e-6)
    np.testing.assert_array_equal(np.delete(res, support), np.delete(corrected, support))


def test_sparse_secagg_equals_plain_sum_and_hides_inputs():
    rec = Recorder()
    res = run_secagg(BASE, rec)
    expected = _expected_sparse(BASE)
    assert len(rec.aggregates) == BASE.run.rounds
    quant_step = 2 * BASE.clipping_range / BASE.quantization_range
    for agg, (support, mean, sent) in zip(rec.aggregates, expected, strict=True):
        np.testing.assert_array_equal(agg["support"], support)
        assert agg["n"] == BASE.run.num_clients
        np.testing.assert_allclose(agg["mean"], mean, atol=3 * quant_step)
        assert not np.allclose(agg["mean"], sent[0], atol=1e-3)  # the mean, not one client's values
    # final model = sum of the aggregated means at each round's support
    final = np.zeros(BASE.dim, np.float32)
    for support, mean, _ in expected:
        final[support] += mean
    np.testing.assert_allclose(rec.final, final, atol=1e-4)

    # The server-side view: masked vectors, one per client per round, look uniform and unrelated.
    assert len(rec.masked_vectors) == BASE.run.num_clients * BASE.run.rounds
    quantizer = BASE.quantization_range / (2 * BASE.clipping_range)
    for mv in rec.masked_vectors:
        masked = mv["vectors"][-1].astype(np.float64)
        assert masked.shape == (BASE.k,)
        assert masked.max() > 2**31 and masked.min() < 2**31  # spread over the 2^32 modulus
        _, _, sent = expected[mv["round"] - 1]
        for vals in sent:
            true_q = (np.clip(vals, -BASE.clipping_range, BASE.clipping_range) + BASE.clipping_range) * quantizer
            close = np.mean(np.abs(masked - true_q) < 1e5)
            assert close < 0.05, "a masked vector is close to a client's quantised input"
            assert abs(np.corrcoef(masked, true_q)[0, 1]) < 0.5
    # bytes were counted for every SecAgg+ stage in both directions
    for stage in ("setup", "share_keys", "collect_masked_vectors", "unmask"):
        assert res["bytes_up"][stage] > 0 and res["bytes_down"][stage] > 0


def test_dense_and_plain_modes_and_bytes():
    dense = run_secagg(replace(BASE.with_run(rounds=1), mode="dense"), rec_d := Recorder())
    plain = run_secagg(replace(BASE.with_run(rounds=1), mode="plain"), rec_p := Recorder())
    sparse = run_secagg(BASE.with_run(rounds=1), Recorder(keep_masked=False))
    updates = [synthetic_update(BASE.run.seed, p, 1, BASE.dim) for p in range(BASE.run.num_clients)]
    np.testing.assert_allclose(rec_d.final, np.mean(updates, axis=0), atol=1e-5)
    assert rec_p.masked_vectors == []  # no SecAgg in the plain baseline
    assert np.count_nonzero(rec_p.final) <= BASE.k * BASE.run.num_clients
    # the masked upload of the sparse scheme is ~k values, the dense one ~dim values
    up_s = sparse["bytes_up"]["collect_masked_vectors"]
    up_d = dense["bytes_up"]["collect_masked_vectors"]
    assert up_s * 5 < up_d, (up_s, up_d)
    assert plain["total_bytes_up"] < dense["total_bytes_up"]


def test_distributed_dp_noise_on_the_sum():
    cfg = replace(BASE.with_run(rounds=1, density=0.1, dp_mode="client", dp_clip_norm=0.5, dp_noise_multiplier=2.0), dim=20000)
    rec = Recorder(keep_masked=False)
    run_secagg(cfg, rec)
    support = shared_support(round_seed(cfg.run.seed, 1), cfg.dim, cfg.k)
    clipped = []
    for p in range(cfg.run.num_clients):
        vals, _ = secure_values(synthetic_update(cfg.run.seed, p, 1, cfg.dim), support,
                                   DPConfig(mode="server", clip_norm=cfg.run.dp_clip_norm), np.random.default_rng(0))
        clipped.append(vals)
    noise_on_mean = rec.aggregates[0]["mean"] - np.mean(clipped, axis=0)
    # sum carries sigma*C, so the mean carries sigma*C/n
    assert np.std(noise_on_mean) == pytest.approx(2.0 * 0.5 / cfg.run.num_clients, rel=0.05)
