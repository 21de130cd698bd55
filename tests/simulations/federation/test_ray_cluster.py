"""The Flower simulation joins an existing Ray cluster (``ray_address``): here a local ``ray start --head``.

The cluster is started with ``--block`` under our own supervisor, so stopping that one process
tree (never a machine-wide ``ray stop``) takes the head down again; the test checks it is gone.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from fedcogen.simulations.federation.federation import SimulationConfig, run_federation
from fedcogen.simulations.federation.supervisor import ManagedProcess, alive, free_port, port_open

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_simulation_runs_on_an_existing_local_ray_cluster(tmp_path) -> None:
    port = free_port()
    temp = Path("/tmp") / f"fcg-ray-{port}"  # Ray's socket paths must stay short
    head = ManagedProcess(
        name="ray-head",
        argv=[str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={port}",
              "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats",
              f"--temp-dir={temp}"],
        log_path=tmp_path / "ray-head.log",
    )
    head.start()
    seen: dict[int, str] = {}
    try:
        head.wait_for(lambda: port_open("127.0.0.1", port), timeout=120, what="the Ray head's GCS port")
        time.sleep(2)
        seen = head.track()
        cfg = SimulationConfig.from_dict(dict(
            model="tiny", num_clients=2, clients_per_round=2, rounds=1, local_steps=1, batch_size=2,
            max_seq_len=48, density=0.1, out_dir=str(tmp_path / "run"), ray_address=f"127.0.0.1:{port}",
        ))
        result = run_federation(cfg)
        assert result["completed_rounds"] == 1 and result["rounds"][1]["accepted"] == 2
        # the clients ran as workers of *this* cluster: its session holds their worker logs
        worker_logs = list(temp.glob("session_*/logs/worker-*"))
        assert worker_logs, f"no Ray worker ran on the cluster at {temp}"
        seen.update(head.track())
    finally:
        head.stop(timeout=60)
    time.sleep(1)
    assert not port_open("127.0.0.1", port)
    left = [pid for pid, start in seen.items() if alive(pid, start)]
    assert not left, f"Ray head processes still alive: {left}"


def test_ray_address_needs_the_flower_engine() -> None:
    with pytest.raises(ValueError, match="ray_address"):
        SimulationConfig.from_dict({"engine": "loopback", "ray_address": "127.0.0.1:6379"})
