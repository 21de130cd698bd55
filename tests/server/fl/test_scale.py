"""Many simulated clients on one machine: memory that does not grow with them, O(1) checkpoints,
one frozen base model per process, a server that never loads the weights."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fedcogen.client.fl.client_state import ClientState
from fedcogen.lora_adapter import LoraSpec, adapter_layout, get_adapter, lora_model
from fedcogen.models import shared_model
from fedcogen.protocols.privacy import dp
from fedcogen.server.fl.checkpoint import CHECKPOINT_NAME, load_checkpoint
from fedcogen.server.fl.client_sampling import eval_cohort
from fedcogen.server.fl.fl_state import KEEP_DELTAS as KEEP
from fedcogen.simulations.federation.federation import SimulationConfig, run_federation

pytestmark = pytest.mark.timeout(900)

# an adapter of 512 KiB (every linear layer of tiny at rank 64): 200 clients' residuals and
# broadcast copies would be hundreds of MB if a process kept them
BIG = dict(model="tiny", lora_r=64, lora_targets="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
           local_steps=1, batch_size=2, max_seq_len=32, density=0.05, seed=3)

CHILD = textwrap.dedent("""
    import json, resource, sys
    import torch
    torch.set_num_threads(1)  # one thread: the test measures memory, not speed, on a shared machine
    from fedcogen.simulations.federation.federation import SimulationConfig, run_federation
    cfg = SimulationConfig.from_dict(json.loads(sys.argv[1]))
    result = run_federation(cfg)
    print(json.dumps({"rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "evaluated": len(result["rounds"][-1]["eval_clients"]), "rounds": result["completed_rounds"]}))
""")


def _peak_rss(tmp_path: Path, n: int) -> dict:
    cfg = {**BIG, "num_clients": n, "clients_per_round": 10, "rounds": 1, "engine": "loopback",
           "out_dir": str(tmp_path / f"run{n}"), "data_dir": str(tmp_path / f"data{n}")}
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True,
                         timeout=800, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_memory_per_process_does_not_grow_with_the_number_of_clients(tmp_path) -> None:
    # every client evaluates twice (round 0 and 1), so every one of them holds a broadcast copy
    small, large = _peak_rss(tmp_path, 10), _peak_rss(tmp_path, 200)
    assert small["evaluated"] == 10 and large["evaluated"] == 200 and large["rounds"] == 1
    state = sum(f.stat().st_size for f in (tmp_path / "run200" / "clients").rglob("*.npz"))
    assert state > 200 * 500_000  # what the 200 clients keep (on disk, read on demand) ...
    growth = large["rss_mib"] - small["rss_mib"]
    assert growth < 64, f"peak RSS grew by {growth:.0f} MiB from 10 to 200 clients"  # ... is not in memory
    assert growth < state / 2**20 / 2


def test_one_frozen_base_per_process_and_a_weightless_server_layout() -> None:
    spec = LoraSpec(r=4)
    lm = lora_model("tiny", 1, spec)
    base = shared_model("tiny", 1).model
    frozen = {p.data_ptr() for p in lm.model.parameters() if not p.requires_grad}
    assert frozen == {p.data_ptr() for p in base.parameters()}  # the same storage, not a copy
    layout = adapter_layout("tiny", 1, spec)  # from the meta-device skeleton
    assert layout.shapes == lm.shapes()
    current = get_adapter(lm)
    assert all(np.array_equal(current[k], layout.initial[k]) for k in layout.shapes)
    assert all(not np.any(v) for k, v in layout.initial.items() if ".lora_B." in k)
    assert adapter_layout("smollm2-27l", 0, LoraSpec()).num_adapter_params() == 414_720  # no weights loaded


def test_eval_cohort_is_fixed_and_seeded() -> None:
    ids = {f"u{i:04d}" for i in range(1000)}
    a = eval_cohort(ids, 20, seed=1)
    assert a is not None and len(a) == 20 and a == eval_cohort(set(sorted(ids)), 20, seed=1)
    assert a != eval_cohort(ids, 20, seed=2)
    assert eval_cohort(ids, 0, seed=1) is None and eval_cohort(ids, 5000, seed=1) is None


def test_checkpoint_does_not_grow_with_rounds_and_journals_are_incremental(tmp_path) -> None:
    common = dict(model="tiny", num_clients=6, clients_per_round=2, eval_clients=2, local_steps=1, batch_size=2,
                  max_seq_len=40, density=0.2, seed=4, engine="loopback", data_dir=str(tmp_path / "data"))
    sizes = {}
    for rounds in (1, 5):
        out = tmp_path / f"r{rounds}"
        result = run_federation(SimulationConfig.from_dict({**common, "rounds": rounds, "out_dir": str(out)}))
        arrays, _meta = load_checkpoint(out)
        chain = [k for k in arrays if k.startswith("delta/")]  # broadcast deltas kept for catch-up chains
        assert len(chain) == min(rounds, KEEP)
        sizes[rounds] = (out / CHECKPOINT_NAME).stat().st_size - sum(arrays[k].nbytes for k in chain)
        rows = (out / "rounds.jsonl").read_text().splitlines()
        assert len(rows) == rounds + 1  # round 0 + every round, appended once each
        ledger = json.loads((out / "ledger.json").read_text())
        assert len(ledger["entries"]) == len((out / "ledger.jsonl").read_text().splitlines())
        assert result["bytes"]["all"] == sum(e["bytes"] for e in ledger["entries"])
        # the evaluation reached only the cohort: 2 clients, never all 6
        assert all(len(m["eval_clients"]) == 2 for m in result["rounds"] if "eval_clients" in m)
    # no per-round history in the checkpoint beyond the last KEEP broadcast deltas (a bounded window)
    assert sizes[5] < sizes[1] + 4096


def test_bench_scale_and_dp_scale_write_their_reports(tmp_path) -> None:
    from fedcogen.simulations.bench.bench_scale import ScaleBenchConfig, run_bench
    from fedcogen.simulations.privacy.dp_scale import DP_SCALE_RUN, DPScaleConfig, run_dp_scale

    res = run_bench(ScaleBenchConfig(models=["tiny"], clients=[4, 12], clients_per_round=2, eval_clients=2, rounds=1,
                                     max_seq_len=32, engine="loopback", out_dir=str(tmp_path / "bench")))
    assert [r["clients"] for r in res["runs"]] == [4, 12]
    assert all(r["peak_process_rss_mib"] > 100 and r["bytes_per_round"] > 0 for r in res["runs"])
    assert "| tiny | 12 |" in (tmp_path / "bench" / "bench_scale.md").read_text()

    run = DP_SCALE_RUN.replace(model="tiny", num_clients=16, clients_per_round=8, rounds=1, max_seq_len=32,
                               eval_clients=4, lora_targets="q_proj,v_proj")
    out = run_dp_scale(DPScaleConfig(run=run, noise_multipliers=(1.0, 2.0), attack_canaries=4, n_alternatives=7,
                                     mia_max_examples=8, out_dir=str(tmp_path / "dp")))
    no_dp, with_dp, more_noise = out["runs"]
    assert no_dp["epsilon"] is None
    # one round of the Poisson-subsampled Gaussian at q = 8/16, from the run's own accountant
    assert with_dp["epsilon"] == pytest.approx(dp.epsilon_for(1.0, 0.5, 1, 16 ** -1.1), rel=1e-9)
    assert more_noise["epsilon"] == pytest.approx(dp.epsilon_for(2.0, 0.5, 1, 16 ** -1.1), rel=1e-9)
    assert out["delta"] == pytest.approx(16 ** -1.1)
    assert with_dp["trained_clients"] == 8 and with_dp["canaries"] == 4
    assert (with_dp["mia"]["n_members"], with_dp["mia"]["n_non_members"]) == (8, 8)  # mia_max_examples each
    assert not (tmp_path / "dp" / "no_dp" / "clients").exists()
    # the frontier: one point per noise level, each with the share of the no-DP gain it kept
    front = out["frontier"]
    assert [p["noise_multiplier"] for p in front["points"]] == [1.0, 2.0]
    gain0 = no_dp["initial_eval_loss"] - no_dp["final_eval_loss"]
    assert front["points"][0]["gain_kept"] == pytest.approx(
        (with_dp["initial_eval_loss"] - with_dp["final_eval_loss"]) / gain0)
    assert front["no_dp_relative_gain"] == pytest.approx(gain0 / no_dp["initial_eval_loss"])
    assert front["target_met"] is False  # one round of a tiny random model gains far less than 30 %
    assert out["provenance"]["code"]["commit"] and out["seeds"]["run_seed"] == run.seed
    assert out["provenance"]["settings"]["noise_multipliers"] == [1.0, 2.0] and out["provenance"]["seeds"] == {"seed": 0}
    assert "amplification" in with_dp and "secret" in with_dp["amplification"]
    report = (tmp_path / "dp" / "dp_scale.md").read_text()
    assert "share of no-DP gain kept" in report and "**not met**" in report


def test_state_left_by_another_run_does_not_push_out_this_runs_state() -> None:
    old = {"x": np.ones(3, np.float32)}
    state = ClientState(residuals={9: old, 10: old}, copies={9: old, 10: old})  # a reused folder
    state.forget_newer(0)  # round 1 of a new run trains on version 0
    state.residuals[1], state.copies[0] = {"x": np.zeros(3, np.float32)}, {"x": np.zeros(3, np.float32)}
    state.prune()
    assert sorted(state.residuals) == [1] and sorted(state.copies) == [0]
    assert state.residual_before(2) is not None
    state.forget_newer(1)  # evaluation of round 1 (version 1) keeps round 1's residual
    assert sorted(state.residuals) == [1]
