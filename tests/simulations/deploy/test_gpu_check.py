"""The GPU check script (``fedcogen gpu-check``): refuses to run without CUDA, runs and reports stages.

Its GPU stages cannot run here (no CUDA); what is tested is that it fails at once and clearly without
one, that the commands it would run carry the device, and that a stage's exit code, log and figures
are reported.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch

from fedcogen.accelerator import DeviceError
from fedcogen.simulations.deploy import gpu_check
from fedcogen.simulations.deploy.gpu_check import (
    GpuCheckConfig,
    figures,
    run_gpu_check,
    run_stage,
    stage_commands,
)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this test is about a machine without CUDA")
def test_without_cuda_the_check_stops_before_running_anything(tmp_path, capsys):
    from fedcogen.cli import main

    with pytest.raises(DeviceError, match="the GPU check needs a CUDA device: device 'cuda' asked for"):
        run_gpu_check(GpuCheckConfig(out=str(tmp_path / "gc")))
    assert not (tmp_path / "gc").exists()
    with pytest.raises(DeviceError, match="resolves to cpu here"):
        gpu_check.require_cuda("cpu")
    assert main(["gpu-check", "--out", str(tmp_path / "gc")]) == 2
    assert "the GPU check needs a CUDA device" in capsys.readouterr().err


def test_every_stage_command_names_the_device(tmp_path):
    cmds = stage_commands(GpuCheckConfig(device="cuda:1", out=str(tmp_path)))
    assert set(cmds) == {"demo", "federation", "bench_cogen"}
    for argv in cmds.values():
        assert argv[argv.index("--device") + 1] == "cuda:1"
    assert "--num-gpus-per-client" in cmds["federation"]
    with pytest.raises(ValueError, match="unknown GPU check stage"):
        run_gpu_check(GpuCheckConfig(stages=("probe", "warp"), out=str(tmp_path)))


def test_a_stage_reports_exit_code_log_and_figures(tmp_path):
    (tmp_path / "federation").mkdir()
    (tmp_path / "federation" / "metrics.json").write_text(json.dumps(
        {"completed_rounds": 2, "final_eval_loss": 9.5, "bytes": {"up": 10}}))
    argv = [sys.executable, "-c", "print('working'); raise SystemExit(3)"]
    row = run_stage("federation", argv, tmp_path, timeout_s=60)
    assert row["rc"] == 3 and not row["ok"]
    assert "working" in (tmp_path / "federation.log").read_text()
    assert row["figures"] == {"completed_rounds": 2, "final_eval_loss": 9.5, "bytes": {"up": 10}}
    slow = run_stage("demo", [sys.executable, "-c", "import time; time.sleep(30)"], tmp_path, timeout_s=0.5)
    assert slow["rc"] is None and slow["error"].startswith("timed out") and figures("demo", tmp_path) == {}
