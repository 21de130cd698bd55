"""Benchmark presets as files, flags over them, and the refusal to reuse runs made by other code or settings."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from fedcogen import provenance as prov
from fedcogen.cli.bench import comm_config
from fedcogen.simulations.bench import bench_comm
from fedcogen.simulations.bench.comm_config import QUICK_PRESET, CommBenchConfig
from fedcogen.simulations.federation.federation import SimulationConfig

COMMIT_A, COMMIT_B = "a" * 40, "b" * 40


def _preset(tmp_path: Path, bench: str = "", recipe: str = 'model = "tiny"\n') -> Path:
    variants = tmp_path / "v.toml"
    variants.write_text('[dense]\nhelp = "d"\ndensity = 1.0\nquant = "fp32"\n\n'
                        '[signs]\nhelp = "s"\ndensity = 0.02\nquant = "sign1"\nlora_mode = "freeze_a"\n')
    p = tmp_path / "p.toml"
    p.write_text(f'[bench]\nvariants_file = "v.toml"\nvariants = ["signs"]\n{bench}\n[recipe]\n{recipe}')
    return p


def test_a_preset_file_names_its_variants_and_rules(tmp_path: Path) -> None:
    cfg = CommBenchConfig.from_file(_preset(tmp_path, "seeds = [4, 5, 6]\nplateau_window = 2\n"))
    assert [v.name for v in cfg.chosen()] == ["signs"] and cfg.chosen()[0].overrides["quant"] == "sign1"
    assert cfg.seeds == (4, 5, 6) and cfg.plateau_window == 2 and cfg.dense().overrides["quant"] == "fp32"


@pytest.mark.parametrize(("bench", "recipe", "match"), [
    ("lr_grid = []\n", 'model = "tiny"\n', "lr_grid"),
    ("seeds = [1, 1]\n", 'model = "tiny"\n', "seeds must be distinct"),
    ("plateau_min_gain = 0\n", 'model = "tiny"\n', "plateau_min_gain"),
    ("levels = [0.5, 2.0]\n", 'model = "tiny"\n', "levels"),
    ("colour = 1\n", 'model = "tiny"\n', r"unknown \[bench\] keys \['colour'\]"),
    ("", 'model = "tiny"\nlr = 0.1\n', r"\[recipe\] sets lr"),
    ("", 'model = "tiny"\nquant = "int3"\n', "quant"),
    ('variants = ["nope"]\n', 'model = "tiny"\n', "unknown comm variant 'nope'"),
])
def test_a_bad_preset_is_refused_naming_the_problem(tmp_path: Path, bench: str, recipe: str, match: str) -> None:
    text = _preset(tmp_path, "", recipe).read_text()
    if bench.startswith("variants"):
        text = text.replace('variants = ["signs"]\n', bench)
    else:
        text = text.replace("[recipe]", bench + "[recipe]")
    (tmp_path / "p.toml").write_text(text)
    with pytest.raises(ValueError, match=match):
        CommBenchConfig.from_file(tmp_path / "p.toml")


def test_flags_override_the_preset_file(tmp_path: Path) -> None:
    args = argparse.Namespace(config=str(_preset(tmp_path)), quick=False, variants="", seeds="7,8",
                              lr_grid="0.1", variants_file=None)
    cfg = comm_config(args)
    assert cfg.seeds == (7, 8) and cfg.lr_grid == (0.1,) and cfg.variants == ("signs",)
    args = argparse.Namespace(config=None, quick=True, variants="freeze-a-d1-down1:5", seeds=None, lr_grid=None,
                              variants_file=None)
    cfg = comm_config(args)
    assert cfg.source == str(QUICK_PRESET) and [(v.name, v.max_rounds) for v in cfg.chosen()] == [("freeze-a-d1-down1", 5)]


@pytest.fixture
def at_commit_a(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prov, "code_state", lambda root=None: {"commit": COMMIT_A, "dirty": False, "dirty_paths": []})


def _finished(tmp_path: Path, commit: str, stop_after: int = 0, **changed: Any) -> dict[str, Any]:
    """A dense run config and a fake run in its folder recorded at ``commit`` (stopped after ``stop_after``)."""
    cfg = {"model": "tiny", "num_clients": 2, "clients_per_round": 2, "rounds": 8, "eval_every": 2, "seed": 3,
           "out_dir": str(tmp_path / "run"), "engine": "loopback"}
    s = SimulationConfig.from_dict({**cfg, **changed, "stop_after": stop_after}).settings()
    (tmp_path / "run").mkdir(parents=True)
    rec = {"code": {"commit": commit, "dirty": False, "dirty_paths": []}, "settings": s.to_config(),
           "seeds": {"seed": s.seed}}
    rounds = [{"round": r, "cum_bytes": 100 * r, "eval_loss": 10.0 - r} for r in (0, 2, 4, 6, 8)]
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(
        {"provenance": rec, "rounds": rounds, "completed_rounds": 8, "final_eval_loss": 2.0}))
    return cfg


def test_dense_is_not_continued_from_a_run_of_another_commit_or_settings(tmp_path: Path, at_commit_a: None) -> None:
    bench = CommBenchConfig(recipe={"model": "tiny"}, variants=(), plateau_window=2)
    cfg = _finished(tmp_path / "c", COMMIT_B, stop_after=4)
    with pytest.raises(prov.ReuseRefused, match=f"made by commit {COMMIT_B[:12]}"):
        bench_comm.run_to_plateau(cfg, bench, reuse=True)
    cfg = _finished(tmp_path / "s", COMMIT_A, lr=0.5)
    with pytest.raises(prov.ReuseRefused, match="setting 'lr'"):
        bench_comm.run_to_plateau(cfg, bench, reuse=True)


def test_a_run_of_this_commit_stopped_early_is_continued_and_a_capped_one_read_back(tmp_path: Path,
                                                                                     at_commit_a: None) -> None:
    """How far a run was taken (stop_after) is not a difference; reaching the cap without a plateau is reported."""
    bench = CommBenchConfig(recipe={"model": "tiny"}, variants=(), plateau_window=2, plateau_min_gain=0.05)
    cfg = _finished(tmp_path, COMMIT_A, stop_after=8)
    result, plateau = bench_comm.run_to_plateau(cfg, bench, reuse=True)  # losses fall 1.0 per evaluation: no plateau
    assert result["completed_rounds"] == 8
    assert plateau == {"reached": False, "round": None, "evaluation": None, "capped": True, "cap": 8,
                       "rounds_run": 8, "window": 2, "min_gain": 0.05}
