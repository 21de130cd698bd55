"""What the comm report says about targets: met only when the interval clears them, by how much missed, and a
warning when a level asks for little of dense's improvement."""

from __future__ import annotations

from typing import Any

from fedcogen.simulations.bench.comm_protocol import interval
from fedcogen.simulations.bench.comm_report import bound_cell, ratio_table, target_lines


def _level(ratios: list[float], of: int = 3) -> dict[str, Any]:
    return {"reached": of, "of": of, "ratio": interval(ratios, log=True)}


def _result(ratio_final: list[float], ratio_90: list[float], shares: list[float], met: tuple[bool, bool]) -> dict:
    runs = [{"name": "dense", "lr": 0.1, "levels": {"90%": _level([1.0] * 3), "final+1%": _level([1.0] * 3)},
             "seeds": [{"level_share_of_improvement": {"90%": 0.9, "final+1%": s}} for s in shares]},
            {"name": "v", "lr": 0.1, "levels": {"90%": _level(ratio_90), "final+1%": _level(ratio_final)}}]
    return {"runs": runs, "level_names": ["90%", "final+1%"], "best": "v", "best_at_90pct": "v",
            "targets": {"ratio_at_final_plus_1pct": 300.0, "ratio_at_90pct": 1000.0},
            "meets": {"ratio_at_final_plus_1pct": met[0], "ratio_at_90pct": met[1]}}


def test_targets_say_met_or_by_how_much_missed_and_flag_weak_levels() -> None:
    r = _result([400.0, 500.0, 450.0], [100.0, 120.0, 80.0], [0.95, 0.97, 0.96], (True, False))
    final, ninety = target_lines(r)
    assert "300x at dense best + 1 %: met" in final and "missed" not in final and "says little" not in final
    assert "NOT met" in ninety and "missed by 10.1x" in ninety and "over 3 of 3 seeds" in ninety
    weak = target_lines(_result([60.0, 62.0], [30.0] * 3, [0.08, -0.29, 0.04], (False, False)))[0]
    assert "missed by 4.9x" in weak and "8 %, -29 %, 4 %" in weak and "says little" in weak


def test_a_ratio_cell_says_how_many_seeds_gave_a_ratio() -> None:
    r = _result([60.0, 62.0], [30.0, 20.0, 40.0], [0.9] * 3, (False, False))
    row = ratio_table(r)[-1]
    assert "(2/3)" in row and row.count("(") == 1  # the 90 % cell has all 3 seeds: no count shown


def test_index_bits_over_bound_reads_none_for_shared_supports() -> None:
    """A shared-support run sends no index: its ratio is nan in memory and null in the JSON, never a crash."""
    assert bound_cell(1.0934) == "1.09"
    assert bound_cell(float("nan")) == bound_cell(None) == "no index bits"
