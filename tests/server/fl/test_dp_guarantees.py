"""DP holds what it promises: uniform weights, the clip checked on decoded bytes, a fingerprinted
accountant, and an honest (local) guarantee for client-side noise without secure aggregation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Context, Message, MetricRecord
from flwr.clientapp import ClientApp

from fedcogen.client.fl import fl_clientapp
from fedcogen.protocols import fl_messages as fm
from fedcogen.protocols.codecs import sparse_codec as codec
from fedcogen.protocols.privacy import dp
from fedcogen.protocols.privacy.dp_release import decoded_norm, encode_within_clip, local_epsilon
from fedcogen.run_config import FLSettings
from fedcogen.server.fl.aggregation import RoundAggregator, ValidationLimits
from fedcogen.server.fl.checkpoint import CheckpointError
from fedcogen.server.fl.dp_guard import DPGuard
from fedcogen.server.fl.fl_serverapp import FederatedServer
from fedcogen.simulations.federation.federation import LoopbackGrid, SimulationConfig

pytestmark = pytest.mark.timeout(600)

SHAPES = {"x.lora_A.weight": (8, 64), "x.lora_B.weight": (64, 8)}
SMALL = dict(model="tiny", num_clients=3, clients_per_round=3, local_steps=1, batch_size=2, max_seq_len=48,
             lr=5e-3, seed=5, density=0.2, quant="int8")


def _sparse(seed: int, norm: float) -> dict[str, codec.SparseTensor]:
    """A top-k selection whose float values have exactly L2 norm ``norm``."""
    rng = np.random.default_rng(seed)
    dense = {k: rng.standard_t(2, size=s).astype(np.float32) for k, s in SHAPES.items()}
    sparse = codec.topk_sparsify(dense, codec.CodecConfig(density=0.3))
    clipped, _ = dp.privatize_sparse_split(sparse, dp.DPConfig(mode="server", clip_norm=norm), rng)
    return clipped


def test_int8_after_clipping_can_exceed_c_and_encode_within_clip_never_does() -> None:
    cfg = codec.CodecConfig(density=0.3, quant="int8")
    plain = [decoded_norm(codec.encode_sparse(_sparse(s, 1.0), cfg, SHAPES), SHAPES) for s in range(40)]
    assert max(plain) > 1.0  # the gap: rounding the clipped values moves the decoded update above C
    fixed = [decoded_norm(encode_within_clip(_sparse(s, 1.0), cfg, 1.0, SHAPES), SHAPES) for s in range(40)]
    assert max(fixed) <= 1.0
    assert min(fixed) > 0.99  # and shrinking costs (almost) nothing


def test_update_above_c_after_dequantisation_is_rejected() -> None:
    settings = FLSettings(dp_mode="server", dp_clip_norm=1.0, dp_noise_multiplier=1.0)
    cfg = codec.CodecConfig(density=0.3, quant="int8")
    seed = next(s for s in range(100) if decoded_norm(codec.encode_sparse(_sparse(s, 1.0), cfg, SHAPES), SHAPES) > 1.0)
    over = codec.encode_sparse(_sparse(seed, 1.0), cfg, SHAPES)  # clipped in float, above C once decoded
    within = encode_within_clip(_sparse(seed, 1.0), cfg, 1.0, SHAPES)
    agg = RoundAggregator(SHAPES, ValidationLimits(), check=DPGuard(settings).check)
    assert agg.offer("liar", over, 1) == "above_dp_clip"
    assert agg.offer("honest", within, 1) is None
    assert agg.result().accepted == ["honest"] and agg.result().rejected == {"above_dp_clip": 1}
    # far above C (a client that skipped clipping) is rejected as well; without DP it is accepted
    big = codec.encode_sparse(_sparse(seed, 50.0), cfg, SHAPES)
    assert agg.offer("skipper", big, 1) == "above_dp_clip"
    assert RoundAggregator(SHAPES, ValidationLimits(), check=DPGuard(FLSettings()).check).offer("x", big, 1) is None


def test_client_mode_bound_allows_the_noise_but_not_a_huge_update() -> None:
    s = FLSettings(dp_mode="client", dp_clip_norm=1.0, dp_noise_multiplier=1.0, clients_per_round=4,
                   num_clients=4)
    cfg = codec.CodecConfig(density=0.3, quant="fp32")
    guard = DPGuard(s)
    rng = np.random.default_rng(0)
    for seed in range(20):
        released, _ = dp.privatize_sparse_split(_sparse(seed, 5.0), guard.dp_config(), rng)
        assert guard.check(codec.decode_sparse(codec.encode_sparse(released, cfg, SHAPES), SHAPES)) is None
    with pytest.raises(codec.UpdateRejected, match="above_dp_clip"):
        guard.check(codec.decode_sparse(codec.encode_sparse(_sparse(0, 100.0), cfg, SHAPES), SHAPES))


def _lying_app(claim: float) -> ClientApp:
    """The real ClientApp, except that partition 0 reports ``claim`` examples."""
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return fl_clientapp.query(msg, context)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        reply = fl_clientapp.train(msg, context)
        if int(context.node_config["partition-id"]) == 0:
            met = dict(reply.content.metric_records[fm.METRICS])
            met[fm.NUM_EXAMPLES] = claim
            reply.content.metric_records[fm.METRICS] = MetricRecord(met)
        return reply

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return fl_clientapp.evaluate(msg, context)

    return app


def _run(tmp_path, name: str, app: ClientApp, **kw) -> FederatedServer:
    cfg = SimulationConfig.from_dict({**SMALL, "rounds": 1, "eval_every": 0, "out_dir": str(tmp_path / name),
                                      "data_dir": str(tmp_path / "data"), "engine": "loopback", **kw})
    server = FederatedServer(LoopbackGrid(app, cfg.run.num_clients, seed=cfg.run.seed), cfg.settings())
    server.run()
    return server


def test_lying_num_examples_cannot_move_the_dp_mean(tmp_path) -> None:
    dp_kw = dict(dp_mode="server", dp_clip_norm=0.05, dp_noise_multiplier=0.0)
    honest = _run(tmp_path, "honest", fl_clientapp.app, **dp_kw)
    lying = _run(tmp_path, "lying", _lying_app(1e9), **dp_kw)
    for k, v in honest.state.global_adapter.items():
        np.testing.assert_array_equal(lying.state.global_adapter[k], v)
    # the bound that enters the sensitivity: every accepted update weighs 1/n, norm <= C
    mean_norm = math.sqrt(sum(float(np.sum((honest.state.global_adapter[k] - honest.layout.initial[k]) ** 2))
                              for k in honest.shapes))
    assert mean_norm <= 0.05 * (1 + 1e-5)
    # without DP the same lie takes over the example-weighted mean
    plain = _run(tmp_path, "plain", fl_clientapp.app)
    plain_lie = _run(tmp_path, "plain_lie", _lying_app(1e9))
    assert any(not np.array_equal(plain.state.global_adapter[k], plain_lie.state.global_adapter[k])
               for k in plain.shapes)


def test_resume_with_changed_dp_settings_is_refused(tmp_path) -> None:
    base = dict(rounds=2, clients_per_round=2, dp_mode="server", dp_clip_norm=0.05, dp_noise_multiplier=0.7)
    full = _run(tmp_path, "full", fl_clientapp.app, **base)
    _run(tmp_path, "part", fl_clientapp.app, stop_after=1, **base)
    for change in ({"dp_noise_multiplier": 0.3}, {"dp_clip_norm": 0.1}, {"dp_delta": 1e-6}, {"dp_mode": "none"}):
        with pytest.raises(CheckpointError, match="dp"):
            _run(tmp_path, "part", fl_clientapp.app, resume=True, **{**base, **change})
    resumed = _run(tmp_path, "part", fl_clientapp.app, resume=True, **base)
    # the accountant replayed the checkpointed round exactly: same epsilon as the uninterrupted run
    assert resumed.accountant.epsilon() == pytest.approx(full.accountant.epsilon(), rel=1e-12)
    assert resumed.state.dp_history == full.state.dp_history


def test_client_mode_without_secagg_reports_local_not_central_epsilon(tmp_path) -> None:
    server = _run(tmp_path, "client", fl_clientapp.app, rounds=2, dp_mode="client", dp_clip_norm=0.05,
                  dp_noise_multiplier=1.0)
    report = server.guard.report(server.accountant, server.state.participations)
    assert report["epsilon"] is None and "local" in report["guarantee"]
    assert report["max_participations"] == 2 and report["positions_covered"] is False
    # sigma C / sqrt(3) noise on a sensitivity-2C release, twice: the local epsilon is large
    assert report["local_epsilon"] == pytest.approx(local_epsilon(1.0, 3, 2, 1e-5))
    assert report["local_epsilon"] > 3 * server.accountant.epsilon()
    rows = server.state.metrics[1:]
    assert all("dp_local_epsilon" in m and "dp_epsilon" not in m for m in rows)
