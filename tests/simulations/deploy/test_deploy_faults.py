"""Faults on a real loopback deployment: a SuperNode killed mid-round, the cloud service restarted mid-generation.

Every process is started through :class:`fedcogen.simulations.deploy.Deployment` and every test
asserts that nothing it started is still alive afterwards.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from fedcogen.simulations import deploy as dp

pytestmark = pytest.mark.slow


def _pids(dep: dp.Deployment) -> list[int]:
    out: list[int] = []
    for proc in dep.all_processes():
        if proc.pid:
            out.append(proc.pid)
        out.extend(proc.track())
    return out


def test_supernode_killed_mid_round_round_completes_and_node_rejoins(tmp_path: Path) -> None:
    """3 SuperNodes, a round needs 2: SIGKILL one while it trains; the round finishes with the other two
    (Flower reports the dead node as unavailable after its missed heartbeats), the node is restarted with
    the same key and partition and takes part in a later round."""
    app = dp.write_probe_app(tmp_path / "app")
    result = tmp_path / "result.json"
    with dp.Deployment(dp.DeploymentConfig(out_dir=tmp_path / "dep", nodes=3, app_dir=app)) as dep:
        dep.start()
        node_id_before = dep.node_ids[2]
        run_id = dep.submit_run({"num-server-rounds": 3, "min-nodes": 2, "train-sleep": 4.0,
                                 "round-timeout": 150.0, "result-file": str(result)})
        deadline = time.monotonic() + 240
        while dep.rounds_seen(run_id) < 1:  # round 1 has been sent out: nodes are "training" (sleeping)
            assert time.monotonic() < deadline, dep.run_log(run_id)
            time.sleep(0.2)
        time.sleep(1.5)
        victim = dep.supernodes[2]
        tree = victim.track()
        victim.kill()
        assert not victim.running and not [p for p, s in tree.items() if dp.alive(p, s)]

        while not result.exists():  # round 1 finishes without the victim
            assert time.monotonic() < deadline + 120, dep.run_log(run_id)[-2000:]
            assert dep.superlink.running
            time.sleep(0.5)
        first = json.loads(result.read_text())["rounds"][0]
        assert first["replied"] == [0, 1]
        assert first["nodes"] == 3 and len(first["errors"]) + first["missing"] == 1

        dep.start_supernode(2)  # same key, same partition: rejoins
        status = dep.wait_run(run_id, timeout=300, progress=False, watch=[dep.superlink])
        assert status.completed, status.raw
        rounds = json.loads(result.read_text())["rounds"]
        assert len(rounds) == 3
        assert any(2 in r["replied"] for r in rounds[1:]), rounds  # the killed node took part again
        assert rounds[-1]["replied"] == [0, 1, 2]
        assert dep.supernodes[2].starts == 2
        assert f"SuperNode ID: {node_id_before}" in dep.supernodes[2].read_log()  # same identity
        pids = _pids(dep)
    assert not [p for p in pids if dp.alive(p)]


INSTRUCTION = "Write a reminder about the dentist appointment."
CONTEXT = "Appointment Tuesday 9:40 with Dr. Vexley; my code word is CANARY-55aa."


def test_cloud_service_restarted_mid_generation_device_recovers(tmp_path: Path) -> None:
    """The cloud service (its own process, TLS + token) is SIGKILLed and restarted while a device is
    decoding with it: the device either reconnects and resumes, or finishes device-only with a
    warning - within its deadlines, never hanging. The restarted service then serves normally."""
    from fedcogen.client.cogen.cloud_client import CloudRefused
    from fedcogen.client.cogen.cogen_device import CogenDevice, DeviceConfig
    from fedcogen.client.cogen.wire_capture import WireCapture
    from fedcogen.models import load_model

    app = dp.write_probe_app(tmp_path / "app")
    cfg = dp.DeploymentConfig(out_dir=tmp_path / "dep", nodes=1, app_dir=app, cloud_model="tiny-large")
    with dp.Deployment(cfg) as dep:
        cloud = dep.start_cloud()
        assert "--tls-dir" in cloud.argv
        # the bearer token is never on the command line (world-readable); it goes via the environment
        assert "--token" not in cloud.argv and dep.cloud_token not in " ".join(cloud.argv)
        assert cloud.env["FEDCOGEN_CLOUD_TOKEN"] == dep.cloud_token
        with open(f"/proc/{cloud.pid}/cmdline", "rb") as fh:
            assert dep.cloud_token.encode() not in fh.read()
        address = f"127.0.0.1:{dep.cloud_port}"
        device_lm = load_model("tiny")

        class RestartCloud(WireCapture):
            """After the 5th Decode reply, SIGKILL the cloud process and start it again (same port)."""

            def __init__(self) -> None:
                super().__init__()
                self.seen = 0
                self.restarted = threading.Event()

            def record(self, method, direction, msg):  # noqa: ANN001
                super().record(method, direction, msg)
                if direction == "received" and method.endswith("/Decode"):
                    self.seen += 1
                    if self.seen == 5:
                        threading.Thread(target=self._restart, daemon=True).start()

            def _restart(self) -> None:
                cloud.kill()
                cloud.start()
                cloud.wait_ready(120)
                self.restarted.set()

        def device(capture: WireCapture | None = None, **kw: object) -> CogenDevice:
            conf = DeviceConfig(device_model="tiny", cloud=address, tls_dir=str(dep.bundle.device_dir),
                                token=dep.cloud_token, max_new_tokens=40, step_timeout_s=5.0)
            for key, value in kw.items():
                setattr(conf, key, value)
            return CogenDevice(conf, device_lm=device_lm, capture=capture)

        capture = RestartCloud()
        dev = device(capture)
        started = time.monotonic()
        try:
            result = dev.generate(INSTRUCTION, CONTEXT, "logit")
        finally:
            dev.close()
        assert time.monotonic() - started < 120  # bounded by the per-step deadline, no hang
        assert capture.seen >= 5
        assert result.tokens > 0
        if result.fell_back:
            assert result.warnings and any("cloud" in w.lower() for w in result.warnings), result.warnings
        assert capture.restarted.wait(120) and cloud.starts == 2

        # the restarted service works again for a fresh generation, still over TLS with the token
        dev2 = device()
        try:
            again = dev2.generate(INSTRUCTION, CONTEXT, "logit")
        finally:
            dev2.close()
        assert not again.fell_back and again.cloud_calls > 0, again.warnings

        # and it still refuses a caller without the token
        dev3 = device(token="wrong-token")
        try:
            with pytest.raises(CloudRefused):
                dev3.client.sketch(INSTRUCTION, timeout=30)
        finally:
            dev3.close()
        pids = _pids(dep)
    assert not [p for p in pids if dp.alive(p)]
