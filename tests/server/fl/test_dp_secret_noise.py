"""DP noise and the DP sample are secret: nothing a client, the server or a reader of a run's outputs
holds rebuilds them, while runs without DP stay bit-reproducible (issue 23)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from fedcogen.client.fl import fl_clientapp, secagg_train
from fedcogen.client.fl.local_round import client_seed
from fedcogen.protocols.privacy import dp
from fedcogen.run_config import FLSettings
from fedcogen.secagg import flatten, round_seed, round_support, secure_values
from fedcogen.server.fl.checkpoint import load_checkpoint
from fedcogen.server.fl.client_sampling import REDACTED, train_sample
from fedcogen.server.fl.fl_serverapp import FederatedServer
from fedcogen.simulations.federation.federation import LoopbackGrid, SimulationConfig

pytestmark = pytest.mark.timeout(600)

SMALL = dict(model="tiny", num_clients=4, clients_per_round=3, rounds=1, local_steps=1, batch_size=2,
             max_seq_len=40, lr=5e-3, seed=7, density=0.2, quant="fp32", eval_every=0)
SERVER_DP = dict(dp_mode="server", dp_clip_norm=0.05, dp_noise_multiplier=1.0)
CLIENT_DP = dict(dp_mode="client", dp_clip_norm=0.05, dp_noise_multiplier=1.0)


def _run(tmp_path: Path, name: str, **kw) -> FederatedServer:
    cfg = SimulationConfig.from_dict({**SMALL, "out_dir": str(tmp_path / name), "data_dir": str(tmp_path / "data"),
                                      "engine": "loopback", **kw})
    server = FederatedServer(LoopbackGrid(fl_clientapp.app, cfg.run.num_clients, seed=cfg.run.seed), cfg.settings())
    server.run()
    return server


def _same(a: FederatedServer, b: FederatedServer) -> bool:
    return all(np.array_equal(a.state.global_adapter[k], b.state.global_adapter[k]) for k in a.shapes)


def test_secret_rng_is_fresh_every_call() -> None:
    a, b = dp.secret_rng().normal(size=64), dp.secret_rng().normal(size=64)
    assert not np.array_equal(a, b)


def test_same_seed_without_dp_is_bit_identical_with_dp_is_not(tmp_path) -> None:
    assert _same(_run(tmp_path, "plain_a"), _run(tmp_path, "plain_b"))
    server_a, server_b = _run(tmp_path, "server_a", **SERVER_DP), _run(tmp_path, "server_b", **SERVER_DP)
    assert not _same(server_a, server_b)
    client_a, client_b = _run(tmp_path, "client_a", **CLIENT_DP), _run(tmp_path, "client_b", **CLIENT_DP)
    assert not _same(client_a, client_b)


def test_dp_sample_is_secret_and_not_released(tmp_path) -> None:
    nodes = {n: f"user-{n:03d}" for n in range(40)}
    seeded = [train_sample(nodes, 5, seed=1, server_round=3) for _ in range(2)]
    assert seeded[0] == seeded[1]  # without DP: reproducible
    secret = {tuple(train_sample(nodes, 5, seed=1, server_round=3, secret=True)) for _ in range(8)}
    assert len(secret) > 1  # 8 draws of 5 out of 40 from the OS CSPRNG: all equal with probability ~1e-40

    server = _run(tmp_path, "dp_rows", rounds=2, eval_on="round", eval_every=1, **SERVER_DP)
    metrics = json.loads((tmp_path / "dp_rows" / "metrics.json").read_text())
    ledger = json.loads((tmp_path / "dp_rows" / "ledger.json").read_text())["entries"]
    names = set(server.nodes.values())
    for row in metrics["rounds"][1:]:
        assert row["sampled"] == REDACTED and row["sampled_count"] == 3
        assert row["eval_clients"] == REDACTED
        assert not names & set(json.dumps(row).replace('"', " ").split())
    assert all(e["client_id"] == "" and e["node_id"] == -1 for e in ledger if e["round"] > 0)
    assert metrics["dp"]["amplification"].startswith("poisson-subsampling (sample secret")
    # without DP the rows still name the sample (the run is reproducible, nothing to hide)
    plain = json.loads((_run(tmp_path, "plain_rows").out / "metrics.json").read_text())
    assert len(plain["rounds"][1]["sampled"]) == 3


def _ints(text: str) -> set[int]:
    return {int(x) for x in re.findall(r"(?<![\d.])\d{1,12}(?![\d.])", text)}


def _noise_candidates(values: set[int], seed: int, server_round: int, n_clients: int):
    """Every generator someone holding the run's files could build from the integers in them."""
    yield "SeedSequence([seed, round, 5]) (the old server formula)", np.random.SeedSequence([seed, server_round, 5])
    for v in sorted(values):
        yield f"default_rng({v})", v
        yield f"SeedSequence([seed, round, {v}])", np.random.SeedSequence([seed, server_round, v])
        yield f"SeedSequence([{v}, round, 5])", np.random.SeedSequence([v, server_round, 5])
    for pid in range(n_clients):
        yield f"client_seed(seed, round, {pid})", client_seed(seed, server_round, pid)


def test_noise_cannot_be_rebuilt_from_config_checkpoint_metrics_and_logs(tmp_path, monkeypatch, caplog) -> None:
    noiseless: list[dict[str, np.ndarray]] = []
    real = dp.server_noise

    def record(mean, cfg, n, rng=None):  # the test plays an oracle that knows the noiseless mean
        noiseless.append({k: np.array(v, copy=True) for k, v in mean.items()})
        return real(mean, cfg, n, rng)

    monkeypatch.setattr(dp, "server_noise", record)
    caplog.set_level(logging.INFO)
    server = _run(tmp_path, "dp", **SERVER_DP)
    out = server.out
    arrays, meta = load_checkpoint(out)
    released = "\n".join([json.dumps(server.s.to_config()), json.dumps(meta), (out / "metrics.json").read_text(),
                          (out / "ledger.json").read_text(), caplog.text])
    assert "SeedSequence([seed, round, stream])" in released  # the seed scheme is published ...
    assert meta["rng"]["dp_noise"] == "os-csprng, not stored"  # ... but the noise is not drawn from it
    # the noise of the broadcast: global adapter after round 1 - version 0 - noiseless mean (FedAvg, lr 1)
    (mean,) = noiseless
    noise = {k: arrays[f"global/{k}"] - server.layout.initial[k] - mean[k] for k in mean}
    cfg = server.guard.dp_config()
    std = dp.server_noise_std(cfg, 3)
    assert np.std(flatten(noise)) == pytest.approx(std, rel=0.1)  # the noise is there, at its scale
    zeros = {k: np.zeros_like(v) for k, v in mean.items()}
    tried = 0
    for label, seed in _noise_candidates(_ints(released), server.s.seed, 1, server.s.num_clients):
        cand = real(zeros, cfg, 3, np.random.default_rng(seed))
        diff = np.abs(flatten(cand) - flatten(noise)).max()
        assert diff > std, f"noise rebuilt from {label}"
        tried += 1
    assert tried > 50


def test_secagg_client_noise_is_not_derivable_from_the_round_seed() -> None:
    s = FLSettings(density=0.5, secagg="secaggplus", secagg_range=10.0, dp_mode="client", dp_clip_norm=1.0,
                   dp_noise_multiplier=1.0, clients_per_round=4, seed=3)
    update = {"w": np.random.default_rng(0).normal(0, 0.01, (8, 64)).astype(np.float32)}
    clean, _, _ = secagg_train.shared_release(update, None, s.replace(dp_noise_multiplier=0.0), 2, None)
    first, support, _ = secagg_train.shared_release(update, None, s, 2, dp.secret_rng())
    second, _, _ = secagg_train.shared_release(update, None, s, 2, None)
    assert np.array_equal(support, round_support(s, 2, 512))  # the support stays public and seeded
    noise = first - clean
    assert not np.allclose(first, second)  # a fresh draw each release
    std = dp.client_noise_std(dp.DPConfig(mode="client", clip_norm=1.0, noise_multiplier=1.0, clients_per_round=4))
    assert np.std(noise) == pytest.approx(std, rel=0.25)
    # what the server knows: the run seed, the round, the round seed it published, every partition id
    for seed in [round_seed(s.seed, 2), s.seed, [s.seed, 2], *[client_seed(s.seed, 2, p) for p in range(4)],
                 *[[s.seed, 7, p, 2] for p in range(4)]]:
        cand = np.random.default_rng(seed).normal(0, std, noise.shape)
        assert np.abs(cand - noise).max() > std, f"client noise rebuilt from {seed}"
    # the stand-alone experiment's helper draws secret noise by default as well
    vals_a, _ = secure_values(flatten(update), support, dp.DPConfig(mode="client", clip_norm=1.0, noise_multiplier=1.0))
    vals_b, _ = secure_values(flatten(update), support, dp.DPConfig(mode="client", clip_norm=1.0, noise_multiplier=1.0))
    assert not np.array_equal(vals_a, vals_b)


def test_privacy_scale_takes_a_noise_frontier_and_refuses_bad_levels(capsys) -> None:
    from fedcogen.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["privacy", "scale", "--noise", "0.6,1.0", "--lora-mode", "core"])
    assert args.noise == (0.6, 1.0) and args.lora_mode == "core"
    for bad in ("0.6,x", "0.6,-1"):
        with pytest.raises(SystemExit):
            parser.parse_args(["privacy", "scale", "--noise", bad])
        assert "--noise wants" in capsys.readouterr().err


def test_fingerprint_names_the_noise_source_and_secagg_accounts_without_amplification() -> None:
    from fedcogen.server.fl.dp_guard import DPGuard, dp_fingerprint

    dp_run = FLSettings(dp_mode="server", dp_noise_multiplier=1.0)
    # a checkpoint written while noise came from the seed lacks this key, so it does not resume under DP
    assert dp_fingerprint(dp_run)["noise_source"] == "os-csprng"
    assert dp_fingerprint(FLSettings()) == {"mode": "none"}  # runs without DP resume as before
    assert DPGuard(dp_run).accounted_rate(0.05) == 0.05
    secure = FLSettings(dp_mode="client", dp_noise_multiplier=1.0, dp_clip_norm=0.1, secagg="secaggplus",
                        secagg_range=10.0, clients_per_round=3)
    guard = DPGuard(secure)
    assert guard.central and guard.accounted_rate(0.05) == 1.0 and guard.amplification.startswith("none")
