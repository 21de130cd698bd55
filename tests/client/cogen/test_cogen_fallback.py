"""A dying cloud must not hang the device; the CLI cloud exits cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fedcogen.client.cogen.cogen_device import CogenDevice, DeviceConfig
from fedcogen.client.cogen.wire_capture import WireCapture
from fedcogen.models import load_model
from fedcogen.server.cogen.cloud_service import CloudConfig, start_cloud_server

INSTRUCTION = "Write a reminder about the dentist appointment."
CONTEXT = "Appointment Tuesday 9:40 with Dr. Vexley; my code word is CANARY-55aa."


class _KillAfter(WireCapture):
    """Wire capture that kills the cloud once it has received ``after`` Decode replies."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after
        self.server = None
        self.killed = threading.Event()
        self.seen = 0

    def record(self, method, direction, msg):  # noqa: ANN001
        super().record(method, direction, msg)
        if direction == "received" and method.endswith("/Decode"):
            self.seen += 1
            if self.seen == self.after and self.server is not None:
                threading.Thread(target=self._kill, daemon=True).start()

    def _kill(self) -> None:
        self.server.kill()
        self.killed.set()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("variant", ["logit", "cloud"])
def test_killed_cloud_falls_back_to_device_only(variant):
    cloud_lm, device_lm = load_model("tiny-large"), load_model("tiny")
    srv = start_cloud_server(CloudConfig(model="tiny-large", insecure=True), lm=cloud_lm)
    capture = _KillAfter(after=5)
    capture.server = srv
    dev = CogenDevice(
        DeviceConfig(device_model="tiny", cloud=srv.address, insecure=True, max_new_tokens=30, step_timeout_s=5.0),
        device_lm=device_lm,
        capture=capture,
    )
    try:
        result = dev.generate(INSTRUCTION, CONTEXT, variant)
    finally:
        dev.close()
    assert capture.killed.is_set()
    assert result.fell_back
    assert any("device-only" in w for w in result.warnings)
    assert any("reconnecting and replaying" in w for w in result.warnings)
    assert result.tokens == 30  # it finished the text on the device
    assert 5 <= result.cloud_calls < 30


@pytest.mark.timeout(180)
def test_cli_serve_and_generate_then_sigterm_exits_zero(tmp_path: Path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedcogen.cli", "cloud", "serve", "--model", "tiny-large", "--insecure", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        address = None
        for line in proc.stdout:
            if line.startswith("cloud listening on "):
                address = line.split()[-1]
                break
        assert address, "cloud did not start"
        data = tmp_path / "tasks.jsonl"
        data.write_text(
            json.dumps({"user_id": "u1", "task_id": "t1", "instruction": INSTRUCTION, "private_context": CONTEXT})
            + "\n"
        )
        out = tmp_path / "gen.json"
        gen = subprocess.run(
            [sys.executable, "-m", "fedcogen.cli", "generate", "--variant", "logit", "--data", str(data),
             "--user", "u1", "--cloud", address, "--insecure", "--device-model", "tiny",
             "--max-new-tokens", "6", "--out", str(out)],
            capture_output=True, text=True, timeout=120, env=env,
        )
        assert gen.returncode == 0, gen.stderr
        rows = json.loads(out.read_text())["results"]
        assert rows[0]["tokens"] == 6 and rows[0]["cloud_calls"] == 6 and not rows[0]["fell_back"]
        assert out.with_suffix(".md").is_file()
        bad = subprocess.run(
            [sys.executable, "-m", "fedcogen.cli", "generate", "--variant", "logit", "--data", str(data),
             "--user", "nobody", "--cloud", address, "--insecure"],
            capture_output=True, text=True, timeout=60, env=env,
        )
        assert bad.returncode == 2 and "no tasks of user 'nobody'" in bad.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    assert rc == 0
