"""Named presets (simulations/federation/presets/): the same file drives `fedcogen simulate` and `fedcogen demo`."""

from __future__ import annotations

import json

import pytest

from fedcogen.cli import build_parser
from fedcogen.cli.demo import config_from_args
from fedcogen.cli.simulate import build_config
from fedcogen.simulations.demo.demo import DEMO_RUN
from fedcogen.simulations.federation.federation import PRESETS, preset_file

LEAN = {"lora_mode": "freeze_a", "density": 0.02, "quant": "int4", "down_density": 0.02}


def _args(argv: list[str]):
    return build_parser().parse_args(argv)


def test_simulate_preset_sets_the_benchmarks_best_and_flags_still_win() -> None:
    run = build_config(_args(["simulate", "--preset", "lean-comm", "--density", "0.05"])).run
    assert (run.lora_mode, run.quant, run.down_density) == ("freeze_a", "int4", 0.02)
    assert run.density == 0.05  # a flag beats the preset


def test_demo_preset_and_grouped_keys_in_a_demo_config(tmp_path) -> None:
    cfg = config_from_args(_args(["demo", "--preset", "lean-comm"]))
    assert {k: getattr(cfg.run, k) for k in LEAN} == LEAN
    assert cfg.run.lora_r == 16  # the rest is the demo's own run (DEMO_RUN)
    conf = tmp_path / "demo.toml"
    conf.write_text('heldout_users = 2\nusers = 4\n[lora]\nr = 8\n')
    cfg = config_from_args(_args(["demo", "--preset", "lean-comm", "--config", str(conf)]))
    assert (cfg.heldout_users, cfg.run.num_clients, cfg.run.lora_r, cfg.run.lora_mode) == (2, 4, 8, "freeze_a")


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown preset 'fastest'.*lean-comm"):
        preset_file("fastest")


def test_every_preset_is_valid_run_config() -> None:
    presets = sorted(PRESETS.glob("*.toml"))
    assert [p.stem for p in presets] == ["lean-comm"]
    for path in presets:
        build_config(_args(["simulate", "--preset", path.stem]))  # unknown or flat keys would raise


def test_print_config_shows_the_preset(capsys) -> None:
    args = _args(["simulate", "--preset", "lean-comm", "--print-config"])
    assert args.func(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["lora.mode"] == "freeze_a" and printed["compress.down-density"] == 0.02


def test_the_demos_run_is_its_config_file() -> None:
    assert (DEMO_RUN.model, DEMO_RUN.num_clients, DEMO_RUN.rounds, DEMO_RUN.local_steps, DEMO_RUN.lr) == (
        "smollm2-27l", 8, 6, 7, 4e-3)
    assert (DEMO_RUN.lora_r, DEMO_RUN.density, DEMO_RUN.fact_swaps, DEMO_RUN.eval_on) == (16, 0.3, 3, "round")
    assert DEMO_RUN.lora_targets.count("_proj") == 7  # every linear layer
