"""The rules of `fedcogen bench comm`: plateau, quality levels, bytes counted, learning-rate choice, intervals."""

from __future__ import annotations

import math

import pytest

from fedcogen.simulations.bench.comm_protocol import (
    Level,
    bytes_through,
    cost_at,
    interval,
    pick_lr,
    plateau_at,
    quality_levels,
    ratio_at,
)


def test_plateau_waits_for_the_last_evaluations_to_add_little_of_the_improvement() -> None:
    still_falling = [10.0, 8.0, 6.0, 5.0, 4.5, 4.2]
    assert plateau_at(still_falling, window=2, min_gain=0.05) is None
    # from 3.0 on, the best improves by 0.05 over 2 evaluations: < 5 % of the 7.0 gained so far
    flat = [10.0, 6.0, 3.2, 3.0, 2.98, 2.96, 2.95]
    assert plateau_at(flat, window=2, min_gain=0.05) == 4
    # a noisy rise does not count as progress, and does not hide a plateau
    assert plateau_at([10.0, 5.0, 3.0, 3.4, 3.1], window=2, min_gain=0.05) == 4
    # the same shape at another loss scale (a random model near ln(vocab)) plateaus at the same evaluation
    assert plateau_at([x / 10 + 9.8 for x in flat], window=2, min_gain=0.05) == 4
    assert plateau_at([5.0, 5.1, 5.2, 5.3], window=1, min_gain=0.05) is None  # never improved: capped, not converged
    with pytest.raises(ValueError, match="window"):
        plateau_at(flat, window=0, min_gain=0.05)
    with pytest.raises(ValueError, match="min_gain"):
        plateau_at(flat, window=2, min_gain=1.5)


def test_quality_levels_are_shares_of_dense_improvement_plus_final_within_one_percent() -> None:
    levels = quality_levels(3.0, 1.0, (0.25, 0.5, 0.9, 1.0))
    assert [lv.name for lv in levels] == ["25%", "50%", "90%", "100%", "final+1%"]
    assert [lv.loss for lv in levels] == pytest.approx([2.5, 2.0, 1.2, 1.0, 1.01])
    with pytest.raises(ValueError, match="did not improve"):
        quality_levels(2.0, 2.0, (0.5,))
    with pytest.raises(ValueError, match="fractions"):
        quality_levels(3.0, 1.0, (1.5,))


def _entry(rnd: int, phase: str, direction: str, n: int, client: str = "c0") -> dict:
    return {"round": rnd, "phase": phase, "direction": direction, "bytes": n, "client_id": client, "node_id": 1}


LEDGER = [
    _entry(0, "query", "down", 10), _entry(0, "query", "up", 20), _entry(0, "evaluate", "down", 5),
    _entry(0, "evaluate", "up", 7), _entry(1, "train", "down", 1000), _entry(1, "train", "up", 900),
    _entry(0, "query", "down", 10), _entry(0, "query", "up", 20),  # a resumed run asks its node again
    _entry(2, "train", "down", 500), _entry(2, "train", "up", 400), _entry(2, "evaluate", "down", 300),
    _entry(2, "evaluate", "up", 7), _entry(3, "train", "down", 99),
]


def test_bytes_count_every_message_both_ways_and_flowertune_counts_train_only() -> None:
    b = bytes_through(LEDGER, 2)
    assert (b["down"], b["up"]) == (10 + 5 + 1000 + 500 + 300, 20 + 7 + 900 + 400 + 7)  # round 3 and the 2nd query out
    assert b["all"] == b["down"] + b["up"]
    assert (b["flowertune"], b["flowertune_down"], b["flowertune_up"]) == (2800, 1500, 1300)


def test_cost_and_ratio_at_a_level_read_the_first_evaluation_at_or_below_it() -> None:
    points = [(0, 42, 10.0), (2, 3149, 9.0), (4, 9999, 8.0)]
    c = cost_at(points, LEDGER, Level("50%", 9.5))
    assert (c["reached"], c["round"], c["before_training"], c["bytes"]["all"]) == (True, 2, False, 3149)
    assert not cost_at(points, LEDGER, Level("100%", 7.0))["reached"]
    dense = {"reached": True, "before_training": False, "bytes": {"all": 31490, "flowertune": 28000}}
    assert ratio_at(dense, c) == pytest.approx(10.0) and ratio_at(dense, c, "flowertune") == pytest.approx(10.0)
    assert ratio_at(dense, cost_at(points, LEDGER, Level("100%", 7.0))) is None
    met_before = cost_at(points, LEDGER, Level("final+1%", 10.5))  # at or above the initial loss
    assert met_before["before_training"] and ratio_at(met_before, c) is None


def test_the_sweep_picks_the_lowest_final_loss_and_refuses_all_diverged() -> None:
    assert pick_lr({0.01: 2.0, 0.03: 1.5, 0.1: 1.7}) == 0.03
    assert pick_lr({0.1: 1.5, 0.03: 1.5}) == 0.03  # tie: the smaller rate
    assert pick_lr({0.1: math.nan, 0.03: 9.0}) == 0.03
    with pytest.raises(ValueError, match="diverged"):
        pick_lr({0.1: math.inf})


def test_intervals_over_seeds_arithmetic_and_in_log_space() -> None:
    iv = interval([1.0, 2.0, 3.0])
    assert iv["mean"] == 2.0 and iv["lo"] == pytest.approx(2.0 - 4.302653 / math.sqrt(3)) and iv["n"] == 3
    g = interval([10.0, 100.0, 1000.0], log=True)
    assert g["mean"] == pytest.approx(100.0) and g["lo"] > 0 and g["lo"] * g["hi"] == pytest.approx(1e4)
    assert interval([5.0])["lo"] is None and interval([])["n"] == 0
    with pytest.raises(ValueError, match="positive"):
        interval([1.0, -1.0], log=True)
