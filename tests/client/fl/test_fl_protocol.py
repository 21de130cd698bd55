"""Unit tests of the message schema, broadcast patches, client compression and configuration."""

from __future__ import annotations

import argparse
import dataclasses
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest

from fedcogen.client.fl.client_state import ClientState
from fedcogen.client.fl.update_compression import compress_update
from fedcogen.lora_adapter import adapter_digest
from fedcogen.protocols import fl_messages as fm
from fedcogen.protocols.codecs import sparse_codec as codec
from fedcogen.run_config import FLSettings
from fedcogen.simulations.federation.federation import SimulationConfig

ROOT = Path(__file__).resolve().parents[3]
SHAPES = {"x.lora_A.weight": (8, 32), "x.lora_B.weight": (32, 8)}


def _adapter(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


def test_pyproject_flower_config_matches_settings() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert cfg["components"] == {"serverapp": "fedcogen.server.fl.fl_serverapp:app",
                                 "clientapp": "fedcogen.client.fl.fl_clientapp:app"}
    # grouped keys (tests/core/test_run_config.py checks the table key for key)
    settings = FLSettings.from_run_config(cfg["config"])
    assert cfg["config"]["lora"] == {"r": 8, "alpha": 16, "dropout": 0.05, "targets": "q_proj,v_proj", "mode": "lora"}
    assert settings.lora_r == 8 and settings.lora_alpha == 16 and settings.lora_targets == "q_proj,v_proj"
    assert settings == FLSettings()
    # SimulationConfig holds the run config instead of copying its fields
    sim_only = {"num_cpus_per_client", "num_gpus_per_client", "engine", "persist_client_state", "ray_address"}
    assert {f.name for f in dataclasses.fields(SimulationConfig)} - sim_only == {"run"}


def test_settings_parse_types_and_fail_hook() -> None:
    s = FLSettings.from_mapping({"rounds": "5", "lr": 1, "resume": "true", "fail_nodes": "1@2, 3"})
    assert s.rounds == 5 and s.lr == 1.0 and s.resume is True
    assert s.fails(1, 2) and not s.fails(1, 3) and s.fails(3, 7) and not s.fails(0, 2)
    with pytest.raises(fm.SchemaError, match="rounds"):
        FLSettings.from_mapping({"rounds": "many"})
    with pytest.raises(fm.SchemaError, match="'x'"):
        FLSettings.from_mapping({"rounds": 2, "x": 1})  # unknown keys are errors, not ignored
    with pytest.raises(fm.SchemaError, match="resume"):
        FLSettings.from_mapping({"resume": "maybe"})  # bools: true/false/1/0/yes/no only
    assert FLSettings.from_mapping({"resume": "No", "history-examples": 1}).history_examples is True
    with pytest.raises(fm.SchemaError, match="density"):
        FLSettings(density=0.0)
    with pytest.raises(fm.SchemaError, match="quant"):
        FLSettings.from_mapping({"quant": "int3"})
    with pytest.raises(fm.SchemaError, match="lora_mode"):
        FLSettings.from_mapping({"lora-mode": "freeze_b"})
    with pytest.raises(fm.SchemaError, match="fail_nodes"):
        FLSettings(fail_nodes="a@b")
    assert FLSettings(density=0.01, clients_per_round=4).effective_down_density() == pytest.approx(0.04)
    assert set(s.client_config()) == {"fail_nodes", "lr"}  # only non-default client keys travel
    assert set(FLSettings(model="smollm2", seed=3).client_config()) == {"model", "seed"}


def test_delta_and_overwrite_patches_rebuild_exactly() -> None:
    base, target = _adapter(0), _adapter(1)
    cfg = codec.CodecConfig(density=0.1, quant="int8")
    gap = {k: target[k] - base[k] for k in base}
    sparse = codec.topk_sparsify(gap, cfg)
    blob = codec.encode_sparse(sparse, cfg)
    server_side = fm.apply_patch(base, fm.PATCH_DELTA, blob, SHAPES)
    client_side = fm.apply_patch({k: v.copy() for k, v in base.items()}, fm.PATCH_DELTA, blob, SHAPES)
    assert adapter_digest(server_side) == adapter_digest(client_side)
    assert adapter_digest(server_side) != adapter_digest(base)
    # overwrite catch-up from an older copy: exactly the server's adapter, bit for bit
    changed = {k: np.asarray(st.indices) for k, st in sparse.items()}
    patch = fm.overwrite_patch(server_side, changed)
    rebuilt = fm.apply_patch(base, fm.PATCH_OVERWRITE, patch, SHAPES)
    assert adapter_digest(rebuilt) == adapter_digest(server_side)
    # a patch for another model is rejected by the codec
    with pytest.raises(codec.UpdateRejected):
        fm.apply_patch(base, fm.PATCH_DELTA, blob, {"other": (2, 2)})
    with pytest.raises(fm.SchemaError):
        fm.Patch("teleport", 0, 1, b"", "")


def test_error_feedback_residual_accounts_for_everything_sent() -> None:
    settings = FLSettings(density=0.05, quant="int8")
    upd, res = _adapter(2), {k: v * 0.1 for k, v in _adapter(3).items()}
    blob, new_res = compress_update(upd, res, settings, np.random.default_rng(0))
    sent = codec.densify(codec.decode_sparse(blob, SHAPES))
    for k in SHAPES:
        np.testing.assert_allclose(sent[k] + new_res[k], upd[k] + res[k], rtol=1e-6, atol=1e-6)
        assert np.count_nonzero(sent[k]) == round(0.05 * upd[k].size)


def test_client_dp_clips_what_is_sent_and_residual_keeps_the_rest() -> None:
    settings = FLSettings(density=0.2, quant="fp32", dp_mode="client", dp_clip_norm=0.5,
                             dp_noise_multiplier=0.0)
    upd = _adapter(4)
    blob, new_res = compress_update(upd, None, settings, np.random.default_rng(0))
    sent = codec.densify(codec.decode_sparse(blob, SHAPES))
    norm = float(np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in sent.values())))
    assert norm <= 0.5 + 1e-5
    for k in SHAPES:
        np.testing.assert_allclose(sent[k] + new_res[k], upd[k], rtol=1e-5, atol=1e-6)


def test_client_dp_noise_never_enters_the_residual() -> None:
    """With client-mode noise, residual = corrected - clipped selection: identical to the noiseless run."""
    base = dict(density=0.2, quant="fp32", dp_mode="client", dp_clip_norm=0.5, clients_per_round=1)
    upd = _adapter(4)
    noisy_blob, noisy_res = compress_update(upd, None, FLSettings(**base, dp_noise_multiplier=2.0),
                                            np.random.default_rng(0))
    clean_blob, clean_res = compress_update(upd, None, FLSettings(**base, dp_noise_multiplier=0.0),
                                            np.random.default_rng(0))
    assert noisy_blob != clean_blob  # noise really was added to what is sent
    for k in SHAPES:
        np.testing.assert_allclose(noisy_res[k], clean_res[k], rtol=1e-6, atol=1e-7)


def test_client_state_roundtrip_and_pruning() -> None:
    st = ClientState()
    for r in range(1, 5):
        st.residuals[r] = _adapter(r)
        st.copies[r - 1] = _adapter(10 + r)
    st.prune()
    assert sorted(st.residuals) == [3, 4] and sorted(st.copies) == [2, 3]
    back = ClientState.from_bytes(st.to_bytes())
    assert sorted(back.residuals) == [3, 4]
    np.testing.assert_array_equal(back.residual_before(4)["x.lora_A.weight"], st.residuals[3]["x.lora_A.weight"])
    assert back.residual_before(3) is None  # a re-run round never reuses its own (uncommitted) residual


def test_simulate_cli_config_file_and_flags(tmp_path) -> None:
    from fedcogen.cli import simulate as simulate_cli

    cfg_file = tmp_path / "run.toml"
    cfg_file.write_text('[simulation]\nstrategy.rounds = 7\ncompress.density = 0.02\nmodel.name = "tiny"\n'
                        'engine = "loopback"\n')
    parser = argparse.ArgumentParser()
    simulate_cli.register(parser.add_subparsers())
    args = parser.parse_args(["simulate", "--config", str(cfg_file), "--density", "0.05", "--resume"])
    cfg = simulate_cli.build_config(args)
    assert cfg.run.rounds == 7 and cfg.run.density == 0.05 and cfg.run.resume is True and cfg.run.model == "tiny"
    assert cfg.engine == "loopback"
    (tmp_path / "bad.json").write_text(json.dumps({"roundz": 3}))
    args = parser.parse_args(["simulate", "--config", str(tmp_path / "bad.json")])
    with pytest.raises(ValueError, match="roundz"):
        simulate_cli.build_config(args)
    with pytest.raises(ValueError, match="clients_per_round"):
        SimulationConfig.from_dict({"num_clients": 2, "clients_per_round": 3})


def test_random_support_sends_the_rounds_shared_support_and_keeps_the_rest() -> None:
    """support = random: the round's shared support (the server derives the same one), no index bits, the
    residual keeps everything off it; the DP clip still holds on what is sent."""
    settings = FLSettings(density=0.05, quant="fp32", support="random", seed=4)
    upd, res = _adapter(2), {k: v * 0.1 for k, v in _adapter(3).items()}
    blob, new_res = compress_update(upd, res, settings, np.random.default_rng(0), server_round=3)
    rule = codec.SupportRule(settings.support_seed(3), settings.density)
    sparse = codec.decode_sparse(blob, SHAPES, expect=rule)  # what the server of round 3 accepts
    assert codec.blob_stats(blob, SHAPES)["index_bits"] == 0
    sent = codec.densify(sparse)
    for k in SHAPES:
        np.testing.assert_allclose(sent[k] + new_res[k], upd[k] + res[k], rtol=1e-6, atol=1e-6)
        assert sparse[k].k == max(1, round(0.05 * upd[k].size))
    with pytest.raises(codec.UpdateRejected, match="stale or replayed"):  # the next round's server refuses it
        codec.decode_sparse(blob, SHAPES, expect=codec.SupportRule(settings.support_seed(4), settings.density))
    with pytest.raises(ValueError, match="needs server_round"):
        compress_update(upd, res, settings, np.random.default_rng(0))
    dp_settings = settings.replace(dp_mode="client", dp_clip_norm=0.5)
    dp_blob, _ = compress_update(upd, None, dp_settings, np.random.default_rng(0), server_round=3)
    dp_sent = codec.decode_sparse(dp_blob, SHAPES, expect=rule)
    assert float(np.sqrt(sum(np.sum(st.values.astype(np.float64) ** 2) for st in dp_sent.values()))) <= 0.5 + 1e-5
