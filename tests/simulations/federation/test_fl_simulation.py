"""A real Flower simulation (Ray engine) of the sparse-LoRA federation with the tiny model."""

from __future__ import annotations

import json
import math

import pytest

from fedcogen.simulations.federation.federation import SimulationConfig, run_federation

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_flower_simulation_three_clients_one_failing(tmp_path) -> None:
    cfg = SimulationConfig.from_dict(dict(
        model="tiny", num_clients=3, clients_per_round=3, rounds=2, local_steps=2, batch_size=2,
        max_seq_len=64, lr=5e-3, density=0.05, fail_nodes="1@2", min_fit_clients=2,
        out_dir=str(tmp_path / "run"), num_cpus_per_client=1.0,
    ))
    result = run_federation(cfg)
    assert result["completed_rounds"] == 2
    rounds = {m["round"]: m for m in result["rounds"]}
    assert rounds[1]["accepted"] == 3 and not rounds[1]["failures"]
    # partition 1 failed in round 2: recorded, the other two were aggregated, the round went on
    assert rounds[2]["accepted"] == 2 and len(rounds[2]["failures"]) == 1
    assert "injected failure" in next(iter(rounds[2]["failures"].values()))
    assert not rounds[2]["aborted"] and result["failures_total"] == 1
    assert math.isfinite(result["final_eval_loss"]) and len(rounds[2]["eval_clients"]) == 3
    assert all(math.isfinite(c["ppl"]) for c in rounds[2]["eval_clients"].values())
    ledger = json.loads((tmp_path / "run" / "ledger.json").read_text())
    phases = {(e["phase"], e["direction"]) for e in ledger["entries"]}
    assert {("train", "down"), ("train", "up"), ("evaluate", "up"), ("query", "up")} <= phases
    assert ledger["summary"]["totals"]["all"] == sum(m["bytes_up"] + m["bytes_down"] for m in result["rounds"])
    assert (tmp_path / "run" / "checkpoint.npz").is_file()
    assert len(list((tmp_path / "run" / "clients").glob("*/client_state.npz"))) == 3
