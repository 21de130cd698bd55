"""End to end: `fedcogen eval --spawn-cloud` with tiny models and a real loopback gRPC cloud.

Slow-ish (starts `fedcogen cloud serve` subprocesses); everything is real: the device generator,
gRPC on loopback, the wire capture the leakage metric reads.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fedcogen.simulations.federation.processes import spawned_cloud

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
pytestmark = pytest.mark.slow


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_eval_cli_end_to_end_with_spawned_cloud(tmp_path):
    out, report = tmp_path / "eval.json", tmp_path / "eval.md"
    variants = ["device", "sketch", "logit", "cloud_with_context"]
    proc = subprocess.run(
        [sys.executable, "-m", "fedcogen.cli", "eval", "--dataset", str(FIXTURES / "eval_tasks.jsonl"),
         "--variants", ",".join(variants), "--spawn-cloud", "--device-model", "tiny", "--cloud-model", "tiny-large",
         "--max-tasks", "2", "--max-new-tokens", "6", "--json", str(out), "--report", str(report), "--no-progress"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["meta"]["tasks"] == 2 and len(data["rows"]) == 2 * len(variants)
    assert all("error" not in r for r in data["rows"])
    rows = {(r["task_id"], r["variant"]): r for r in data["rows"]}
    for tid in ("A", "B"):
        assert rows[tid, "device"]["bytes_total"] == 0 and rows[tid, "device"]["leaked_facts"] == 0
        assert rows[tid, "logit"]["bytes_sent"] > 0 and rows[tid, "logit"]["bytes_received"] > 0
        assert rows[tid, "sketch"]["leaked_facts"] == 0  # the instruction carries no private fact
        assert 0 < rows[tid, "device"]["tokens"] <= 6
    # the evaluation-only upper bound ships the private context: both facts of A, the one of B
    assert rows["A", "cloud_with_context"]["leaked"] == ["Dr. Okafor", "Tuesday"]
    assert rows["B", "cloud_with_context"]["leaked"] == ["Blue Fern"]
    assert data["overall"]["cloud_with_context"]["leaked_facts"]["mean"] == pytest.approx(1.5)
    assert data["overall"]["logit"]["cloud_call_fraction"]["mean"] > 0
    assert report.is_file() and (tmp_path / "eval_quality_vs_bytes.png").is_file()
    # the spawned cloud was stopped after the run
    port = int(re.search(r"--port (\d+)", proc.stderr).group(1))
    assert not port_open(port)
    assert "shutting down" in (tmp_path / "eval.cloud.log").read_text()


def test_spawned_cloud_is_stopped_even_when_the_run_fails(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), spawned_cloud("tiny-large", log_path=tmp_path / "c.log") as cloud:
        port = int(cloud.address.rsplit(":", 1)[1])
        assert port_open(port)
        raise RuntimeError("boom")
    assert cloud.process.poll() is not None
    assert not port_open(port)


def test_spawned_cloud_that_cannot_start_fails_clearly(tmp_path):
    with pytest.raises(RuntimeError, match="exited with code"), spawned_cloud(
        str(tmp_path / "no-such-model"), log_path=tmp_path / "c.log", timeout_s=120
    ):
        pass
    assert "no-such-model" in (tmp_path / "c.log").read_text()


def test_device_personalised_uses_the_adapter(tmp_path, capsys):
    """A real PEFT LoRA adapter folder is layered on a second device model for device_personalised."""
    from peft import LoraConfig, get_peft_model

    from fedcogen.cli import main
    from fedcogen.models import load_model

    lm = load_model("tiny", seed=0)
    peft_model = get_peft_model(lm.model, LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"],
                                                     init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    out = tmp_path / "eval.json"
    rc = main(["eval", "--dataset", str(FIXTURES / "eval_tasks.jsonl"), "--variants", "device,device_personalised",
               "--adapter", str(tmp_path / "adapter"), "--device-model", "tiny", "--max-new-tokens", "6",
               "--json", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    data = json.loads(out.read_text())
    assert all("error" not in r for r in data["rows"]) and len(data["rows"]) == 6
    texts = {(r["task_id"], r["variant"]): r["text"] for r in data["rows"]}
    assert any(texts[t, "device"] != texts[t, "device_personalised"] for t in "ABC")
    assert data["overall"]["device_personalised"]["bytes_total"]["mean"] == 0
    assert data["meta"]["adapter"] == str(tmp_path / "adapter")
