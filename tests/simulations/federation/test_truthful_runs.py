"""Issue 24, the federation side: a run that did not do what was asked exits non-zero with its cause,
stopping a run stops everything it started, and a resume or a re-run never mixes two experiments.

The Flower tests use the tiny model, a couple of clients and one local step, so each takes well
under a minute on a 2-core machine; the others never start Flower.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.supercore.constant import DEFAULT_SIMULATION_CONFIG

from fedcogen.run_config import FLSettings
from fedcogen.server.fl.checkpoint import CheckpointError, load_checkpoint
from fedcogen.server.fl.fl_serverapp import FederatedServer
from fedcogen.server.fl.fl_state import NOT_RESULT_KEYS, RESULT_KEYS, ServerState, check_resumable, save_state
from fedcogen.server.fl.run_status import COMPLETED, RunStatus, write_run_status
from fedcogen.simulations.federation.federation import SimulationConfig, run_federation
from fedcogen.simulations.federation.flower_app import project_app_dir
from fedcogen.simulations.federation.flwr_run import LocalFederation, RunFailed, outcome, run_flwr_app
from fedcogen.simulations.federation.supervisor import alive, processes_with_env, stop_marked

FEDCOGEN = str(Path(sys.executable).parent / "fedcogen")
QUICK = {"model": "tiny", "local_steps": 1, "batch_size": 2, "max_seq_len": 64, "num_clients": 2,
         "clients_per_round": 2}
QUICK_FLAGS = ["--model", "tiny", "--local-steps", "1", "--batch-size", "2", "--max-seq-len", "64", "--num-clients", "2",
               "--clients-per-round", "2"]


def _finished_run(out: Path, **changes: object) -> FLSettings:
    """A finished 1-round run in ``out`` (loopback engine: the same ServerApp logic, no Flower start-up)."""
    run = FLSettings(**{**QUICK, "rounds": 1, "out_dir": str(out), **changes})
    run_federation(SimulationConfig(run=run, engine="loopback"))
    return run


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FEDCOGEN, "simulate", *args], capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------- 1: a failed resume


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_serverapp_failure_is_an_error_with_its_cause(tmp_path: Path) -> None:
    """`flwr run` exits 0 when the ServerApp raises; the run must still fail, naming the ServerApp's
    error, even though the previous run's metrics.json is there (the preflight is bypassed here)."""
    out = tmp_path / "run"
    _finished_run(out)
    old_metrics = (out / "metrics.json").read_text()
    changed = FLSettings(**{**QUICK, "rounds": 3, "seed": 1, "resume": True, "out_dir": str(out)})
    with pytest.raises(RunFailed) as err:
        run_flwr_app(project_app_dir(), changed.to_run_config(), LocalFederation(2, num_cpus_per_client=1.0),
                     work_dir=out, timeout=240)
    last = str(err.value).splitlines()[-1]
    assert last.startswith("ServerApp: CheckpointError") and "seed" in last, str(err.value)
    assert (out / "metrics.json").read_text() == old_metrics  # the old result was not relabelled
    assert json.loads((out / "run-status.json").read_text())["status"] == "failed"


def test_an_old_record_never_passes_for_this_run(tmp_path: Path) -> None:
    """No record from this run (an old one is there): the cause is the log's last error, never success."""
    write_run_status(tmp_path, RunStatus(COMPLETED, started=time.time() - 3600, completed_rounds=3, target_rounds=3))
    log = "Traceback (most recent call last):\n  ...\nModuleNotFoundError: No module named 'fedcogen.client'\n"
    with pytest.raises(RunFailed) as err:
        outcome(tmp_path, time.time(), log, tmp_path / "flwr-run.log")
    assert str(err.value).splitlines()[-1] == ("the ServerApp never started; last error in the log: "
                                               "ModuleNotFoundError: No module named 'fedcogen.client'")


def test_failed_resume_exits_nonzero_with_the_cause_last(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _finished_run(out)
    started = time.monotonic()
    res = _cli(*QUICK_FLAGS, "--rounds", "4", "--seed", "1", "--out-dir", str(out), "--resume")
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert "seed" in last and "0 in the checkpoint, 1 now" in last, res.stderr
    assert "rounds completed" not in res.stdout  # no result printed for a run that did not happen
    assert time.monotonic() - started < 60  # refused before Flower starts
    assert not (out / "flwr-run.log").exists()


# --------------------------------------------------------------------------- 3: `flwr run .` as written


def test_app_defaults_match_flowers_default_federation() -> None:
    """README's `flwr run .` starts Flower's default number of simulated SuperNodes; the app waits for
    num_clients of them, so the defaults must agree or the run waits round_timeout for nodes that never come."""
    s = FLSettings()
    assert s.num_clients == DEFAULT_SIMULATION_CONFIG.num_supernodes
    assert s.clients_per_round <= s.num_clients


class _Grid:
    """Nodes that arrive one by one (as SuperNodes of a deployment do)."""

    def __init__(self, arrivals: list[int]) -> None:
        self.arrivals = arrivals

    def get_node_ids(self) -> list[int]:
        count = self.arrivals.pop(0) if len(self.arrivals) > 1 else self.arrivals[0]
        return list(range(1, count + 1))

    def send_and_receive(self, messages: object, *, timeout: float | None = None) -> list[object]:
        return []


def test_server_says_what_it_waits_for(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = FLSettings(**{**QUICK, "num_clients": 3, "clients_per_round": 3, "out_dir": str(tmp_path)})
    server = FederatedServer(_Grid([1, 1, 2, 3]), settings)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="fedcogen.server"):
        server.handshake()
    waiting = [r.getMessage() for r in caplog.records if "waiting for" in r.getMessage()]
    assert waiting and waiting[0].startswith("waiting for 2 of 3 nodes (1 connected), up to 600 s"), waiting


# --------------------------------------------------------------------------- 4: stopping a run stops it


def _snapshot(out: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every result file in out (the SuperLink's database folder aside)."""
    return {str(p.relative_to(out)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in out.rglob("*") if p.is_file() and "flwr-home" not in p.parts}


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_stopping_simulate_stops_every_process_it_started(tmp_path: Path, sig: int) -> None:
    out = tmp_path / "run"
    marker = f"FLWR_HOME={out / 'flwr-home'}"  # every process of the run inherits the private Flower home
    err = tmp_path / "stderr.txt"
    with err.open("w") as fh:
        proc = subprocess.Popen([FEDCOGEN, "simulate", *QUICK_FLAGS, "--rounds", "40", "--out-dir", str(out)],
                                stdout=subprocess.DEVNULL, stderr=fh, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        journal = out / "rounds.jsonl"
        while not (journal.is_file() and journal.read_text().count("\n") >= 2):  # round 0 and round 1
            assert proc.poll() is None, f"simulate ended before its first round: {err.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "no round within 240 s"
            time.sleep(0.5)
        started = processes_with_env(marker)
        assert len(started) >= 3, started  # flwr run, the SuperLink, the simulation (+ Ray)
        os.kill(proc.pid, sig)
        assert proc.wait(timeout=60) != 0
        if sig == signal.SIGTERM:  # it says so, and how to go on
            assert "stopped by a signal" in err.read_text() and "--resume" in err.read_text(), err.read_text()
        deadline = time.monotonic() + 60
        while processes_with_env(marker) or any(alive(p, s) for p, s in started.items()):
            assert time.monotonic() < deadline, f"still alive 60 s after {sig!r}: {processes_with_env(marker)}"
            time.sleep(0.5)
        before = _snapshot(out)
        time.sleep(6)
        assert _snapshot(out) == before, "the out-dir still changes after the run was stopped"
        # what is left can be resumed: a complete checkpoint with the settings of the run
        _, meta = load_checkpoint(out)
        assert meta["round"] >= 1
        check_resumable(out, FLSettings.from_mapping({**meta["settings"], "resume": True}))
    finally:
        if proc.poll() is None:
            proc.kill()
        stop_marked(marker, timeout=5)


# --------------------------------------------------------------------------- 5: ServerApp errors, early


def test_missing_model_fails_fast_with_its_name(tmp_path: Path) -> None:
    out = tmp_path / "run"
    started = time.monotonic()
    res = _cli("--model", "/nonexistent/model", "--rounds", "1", "--out-dir", str(out), timeout=60)
    assert res.returncode != 0
    assert "/nonexistent/model" in res.stderr.strip().splitlines()[-1], res.stderr
    assert time.monotonic() - started < 30
    assert not (out / "flwr-run.log").exists()  # Flower never started


def test_a_run_whose_every_round_aborted_fails_with_the_clients_errors(tmp_path: Path) -> None:
    """SuperNode/ClientApp failures in every round: the model never changed, so the run did not happen."""
    run = FLSettings(**{**QUICK, "rounds": 2, "fail_nodes": "0,1", "out_dir": str(tmp_path / "run")})
    with pytest.raises(RunFailed, match=r"every round was aborted.*injected failure"):
        run_federation(SimulationConfig(run=run, engine="loopback"))


# --------------------------------------------------------------------------- 6: resume and re-run


def test_fingerprint_lists_every_setting() -> None:
    """Every FLSettings field is either result-altering (compared on resume) or named as not."""
    fields = set(FLSettings.__dataclass_fields__)
    assert set(RESULT_KEYS) | set(NOT_RESULT_KEYS) == fields
    assert not set(RESULT_KEYS) & set(NOT_RESULT_KEYS)


@pytest.mark.parametrize("change", [{"density": 0.05}, {"lr": 1e-3}, {"quant": "fp16"}, {"local_steps": 2},
                                    {"eval_every": 2}, {"max_update_norm": 5.0}])
def test_resume_refuses_a_changed_setting_naming_it(tmp_path: Path, change: dict[str, object]) -> None:
    run = FLSettings(**{**QUICK, "out_dir": str(tmp_path)})
    save_state(tmp_path, ServerState.fresh({"a": np.zeros(3, np.float32)}), run)
    key = next(iter(change))
    with pytest.raises(CheckpointError, match=rf"differ in {key} \("):
        check_resumable(tmp_path, run.replace(resume=True, **change))
    # settings that do not change the result: rounds, timeouts, where the folder now is
    check_resumable(tmp_path, run.replace(resume=True, rounds=9, stop_after=5, round_timeout=30.0))


def test_resume_of_a_moved_run_is_accepted(tmp_path: Path) -> None:
    run = FLSettings(**{**QUICK, "out_dir": str(tmp_path / "a"), "data_dir": str(tmp_path / "a" / "data")})
    save_state(tmp_path / "a", ServerState.fresh({"a": np.zeros(3, np.float32)}), run)
    (tmp_path / "a").rename(tmp_path / "b")
    check_resumable(tmp_path / "b", run.replace(out_dir=str(tmp_path / "b"), data_dir=str(tmp_path / "b" / "data")))
    with pytest.raises(CheckpointError, match="data_dir"):
        check_resumable(tmp_path / "b", run.replace(out_dir=str(tmp_path / "b"), data_dir=str(tmp_path / "other")))


def test_rerun_into_a_finished_run_is_refused_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run = _finished_run(out)
    checkpoint = (out / "checkpoint.npz").read_bytes()
    with pytest.raises(CheckpointError, match=r"holds a previous run \(checkpoint.npz, metrics.json"):
        run_federation(SimulationConfig(run=run, engine="loopback"))
    assert (out / "checkpoint.npz").read_bytes() == checkpoint and (out / "clients").is_dir()
    res = _cli(*QUICK_FLAGS, "--rounds", "1", "--out-dir", str(out))
    assert res.returncode != 0 and "--overwrite" in res.stderr.strip().splitlines()[-1], res.stderr
    result = run_federation(SimulationConfig(run=run.replace(overwrite=True, rounds=2), engine="loopback"))
    assert result["completed_rounds"] == 2


def test_serverapp_refuses_to_replace_a_run_unasked(tmp_path: Path) -> None:
    """`flwr run .` reaches the ServerApp directly: it refuses too (and overwrite=true replaces)."""
    out = tmp_path / "run"
    run = _finished_run(out)
    with pytest.raises(CheckpointError, match="overwrite"):
        FederatedServer(_Grid([2]), run)  # type: ignore[arg-type]
    server = FederatedServer(_Grid([2]), run.replace(overwrite=True))  # type: ignore[arg-type]
    assert server.state.round == 0 and not (out / "checkpoint.npz").exists()
