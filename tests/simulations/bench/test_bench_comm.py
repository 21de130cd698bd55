"""The comm benchmark's pieces that need no model run: the variant registry and warm-up rounds."""

from __future__ import annotations

import pytest

from fedcogen.run_config import FLSettings
from fedcogen.simulations.bench.comm_variants import DENSE, VARIANTS, check_registry, pick
from fedcogen.simulations.evaluation.report import met_word


def test_every_variant_is_a_valid_run_config() -> None:
    check_registry()
    assert DENSE.overrides["density"] == 1.0 and DENSE.overrides["quant"] == "fp32"
    assert [v.name for v in pick("core-int4,sparse-int8", quick=False)] == ["core-int4", "sparse-int8"]
    assert pick("", quick=True) and all(v.name in VARIANTS for v in pick(None, quick=False))
    with pytest.raises(ValueError, match="unknown comm variant"):
        pick("core-int2", quick=True)
    assert [v.max_rounds for v in pick("core-int4,sparse-int8:4", quick=False)] == [0, 4]
    with pytest.raises(ValueError, match="round cap"):
        pick("sparse-int8:x", quick=False)
    assert VARIANTS["core-int4"].settings({"lr": 1e-3})["lr"] == pytest.approx(2e-3)


def test_warmup_rounds_send_every_entry_then_top_k() -> None:
    s = FLSettings(density=0.1, clients_per_round=2, warmup_rounds=2)
    assert s.round_settings(1).density == 1.0 and s.round_settings(2).effective_down_density() == 1.0
    assert s.round_settings(3) is s and s.round_settings(3).effective_down_density() == pytest.approx(0.2)
    assert s.round_settings(1).client_config()["density"] == 1.0
    assert FLSettings().round_settings(1) == FLSettings()


def test_a_target_with_nothing_to_judge_reads_n_a() -> None:
    assert [met_word(v) for v in (True, False, None)] == ["met", "NOT met", "n/a"]
