"""The comm benchmark's pieces that need no model run: variants and presets as config files, warm-up rounds."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcogen.run_config import FLSettings
from fedcogen.simulations.bench.comm_config import FULL_PRESET, QUICK_PRESET, CommBenchConfig, preset
from fedcogen.simulations.bench.comm_variants import DENSE_NAME, load_variants, parse_variants, pick
from fedcogen.simulations.evaluation.report import met_word


def test_the_shipped_variants_file_and_presets_load_and_validate() -> None:
    reg = load_variants()
    assert reg[DENSE_NAME].overrides["density"] == 1.0 and reg[DENSE_NAME].overrides["quant"] == "fp32"
    for path in (FULL_PRESET, QUICK_PRESET):
        cfg = CommBenchConfig.from_file(path)
        assert len(cfg.seeds) >= 3 and len(cfg.lr_grid) >= 3 and cfg.chosen()
    assert preset(False).recipe["model"] == "smollm2" and preset(True).recipe["model"] == "tiny"


def test_pick_reads_names_and_caps_and_refuses_unknown_or_the_baseline() -> None:
    reg = load_variants()
    assert [v.name for v in pick("core-int4,sparse-int8", reg)] == ["core-int4", "sparse-int8"]
    assert [v.max_rounds for v in pick(["core-int4", "sparse-int8:4"], reg)] == [0, 4]
    with pytest.raises(ValueError, match="unknown comm variant 'core-int2'"):
        pick("core-int2", reg)
    with pytest.raises(ValueError, match="round cap"):
        pick("sparse-int8:x", reg)
    with pytest.raises(ValueError, match="baseline"):
        pick("dense", reg)
    assert reg["freeze-a-sign-d2-down2"].settings({"lr": 1e-3, "seed": 0}, lr=0.05)["lr"] == 0.05


def test_warmup_rounds_send_every_entry_then_top_k() -> None:
    s = FLSettings(density=0.1, clients_per_round=2, warmup_rounds=2)
    assert s.round_settings(1).density == 1.0 and s.round_settings(2).effective_down_density() == 1.0
    assert s.round_settings(3) is s and s.round_settings(3).effective_down_density() == pytest.approx(0.2)
    assert s.round_settings(1).client_config()["density"] == 1.0
    assert FLSettings().round_settings(1) == FLSettings()


def test_a_target_with_nothing_to_judge_reads_n_a() -> None:
    assert [met_word(v) for v in (True, False, None)] == ["met", "NOT met", "n/a"]


def test_a_bad_variant_is_named_with_its_problem(tmp_path: Path) -> None:
    dense = {"help": "d", "density": 1.0}
    with pytest.raises(ValueError, match="variant 'x'.*quant"):
        parse_variants({"dense": dense, "x": {"help": "h", "quant": "int3"}})
    with pytest.raises(ValueError, match="'x' sets lr"):
        parse_variants({"dense": dense, "x": {"help": "h", "lr": 0.1}})
    with pytest.raises(ValueError, match="needs a one-line `help`"):
        parse_variants({"dense": dense, "x": {"density": 0.1}})
    with pytest.raises(ValueError, match=r"no \[dense\] table"):
        parse_variants({"x": {"help": "h"}})
