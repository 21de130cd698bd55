"""The draft-edit speed projection: measured forward costs per width, and the projection arithmetic."""

from __future__ import annotations

import json

import pytest

from fedcogen.cli import main
from fedcogen.models import load_model
from fedcogen.simulations.bench.bench_draft_edit import (
    DraftEditBenchConfig,
    cost_of,
    forward_costs,
    project,
    run_draft_edit_bench,
)


def test_forward_costs_are_measured_per_width():
    cfg = DraftEditBenchConfig(model="tiny", context_tokens=40, widths=(1, 4), repeats=2)
    costs = forward_costs(load_model("tiny"), cfg)
    assert set(costs) == {1, 4} and all(c > 0 for c in costs.values())
    with pytest.raises(ValueError, match="include 1"):
        DraftEditBenchConfig(widths=(2, 4)).validate()


def test_projection_prices_each_answers_passes_at_their_mean_width():
    costs = {1: 0.010, 5: 0.030}
    assert cost_of(costs, 3) == pytest.approx(0.020)
    rows = [
        {"variant": "device_personalised", "tokens": 40, "device_passes": 40, "device_fed": 40},
        {"variant": "draft_edit", "tokens": 40, "device_passes": 10, "device_fed": 50, "draft_tokens": 40,
         "draft_accepted": 30},
        {"variant": "draft_edit", "tokens": 9, "device_passes": 9, "fell_back": True},  # not in the means
    ]
    p = project(costs, rows)
    assert p["device_personalised"]["device_s_per_answer"] == pytest.approx(0.40)
    assert p["draft_edit"]["device_s_per_answer"] == pytest.approx(10 * 0.030)  # width 5
    assert p["draft_edit"]["passes_per_token"] == pytest.approx(0.25)
    assert p["draft_edit"]["draft_acceptance"] == pytest.approx(0.75)
    assert p["speedup_per_token"] == pytest.approx(0.40 / 0.30)
    with pytest.raises(ValueError, match="no scored 'draft_edit'"):
        project(costs, rows[:1])


def test_bench_command_writes_costs_and_projection(tmp_path):
    rows = [{"variant": "device_personalised", "tokens": 8, "device_passes": 8, "device_fed": 8},
            {"variant": "draft_edit", "tokens": 8, "device_passes": 2, "device_fed": 10, "draft_tokens": 8,
             "draft_accepted": 7}]
    results, other = tmp_path / "eval.json", tmp_path / "eval-device.json"
    results.write_text(json.dumps({"rows": rows[1:]}))  # one run per variant, as two files
    other.write_text(json.dumps({"rows": rows[:1]}))
    out = tmp_path / "bench.json"
    assert main(["bench", "draft-edit", "--model", "tiny", "--context-tokens", "30", "--widths", "1,5",
                 "--repeats", "1", "--device", "cpu", "--results", str(results), "--results", str(other), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data["forward_s"]) == {"1", "5"} and data["projection"]["draft_edit"]["passes"] == 2
    assert run_draft_edit_bench(DraftEditBenchConfig(model="tiny", context_tokens=20, widths=(1,), repeats=1)).get("projection") is None
