"""The deployment probe: a tiny Flower app that checks a deployment's plumbing without loading a model.

Why a separate app: TLS, node authentication, partitions and restarts are tested in seconds with a
federated mean of partition ids; the app is written to a folder so ``flwr run FOLDER`` ships it as
its own FAB to any deployment.
"""

from __future__ import annotations

from pathlib import Path

_PROBE_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "fedcogenprobe"
version = "1.0.0"
description = "fedcogen deployment probe: federated mean of partition ids, no model"
dependencies = []

[tool.flwr.app]
publisher = "fedcogen"

[tool.flwr.app.components]
serverapp = "fedcogenprobe.server_app:app"
clientapp = "fedcogenprobe.client_app:app"

[tool.flwr.app.config]
num-server-rounds = 2
min-nodes = 2
result-file = ""
round-timeout = 120.0
train-sleep = 0.0
payload-floats = 3
"""

_PROBE_SERVER = '''\
"""Probe ServerApp: a mean over whoever replies, recording per round which partitions replied.

Own loop (not a Flower strategy) so the result names the nodes that took part in each round, the
errors Flower reported for nodes that did not, and the round wall time (bandwidth benchmarks).
"""
import json
import time

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    rounds, min_nodes, timeout = int(cfg["num-server-rounds"]), int(cfg["min-nodes"]), float(cfg["round-timeout"])
    vec = np.zeros(int(cfg["payload-floats"]), dtype=np.float32)
    history = []
    for rnd in range(1, rounds + 1):
        print(f"[ROUND {rnd}/{rounds}]", flush=True)
        deadline = time.time() + timeout
        nodes = sorted(grid.get_node_ids())
        while len(nodes) < min_nodes and time.time() < deadline:
            time.sleep(0.5)
            nodes = sorted(grid.get_node_ids())
        started = time.time()
        conf = ConfigRecord({"round": rnd, "sleep": float(cfg["train-sleep"])})
        msgs = [Message(RecordDict({"arrays": ArrayRecord([vec]), "config": conf}), dst_node_id=n,
                        message_type=MessageType.TRAIN) for n in nodes]
        replies = list(grid.send_and_receive(msgs, timeout=timeout))
        ok = [m for m in replies if not m.has_error()]
        errors = [str(m.error.reason) for m in replies if m.has_error()]
        replied = sorted(int(m.content["metrics"]["partition-id"]) for m in ok)
        entry = {"round": rnd, "nodes": len(nodes), "replied": replied, "errors": errors,
                 "missing": len(nodes) - len(replies), "seconds": time.time() - started}
        history.append(entry)
        print(f"probe round {rnd}: replied {replied}, errors {len(errors)}, {entry['seconds']:.2f} s", flush=True)
        if len(ok) < min_nodes:
            raise RuntimeError(f"round {rnd}: {len(ok)} replies < min-nodes {min_nodes} ({errors})")
        vec = np.mean([m.content["arrays"].to_numpy_ndarrays()[0] for m in ok], axis=0).astype(np.float32)
        if cfg["result-file"]:
            with open(str(cfg["result-file"]), "w") as fh:
                json.dump({"final": vec[:3].tolist(), "rounds": history}, fh)
    print("PROBE FINAL", vec[:3].tolist(), flush=True)
'''

_PROBE_CLIENT = '''\
"""Probe ClientApp: adds (partition-id + 1) to every entry, so the mean tells who took part."""
import time

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    time.sleep(float(msg.content["config"]["sleep"]))
    arrays = [a + pid + 1.0 for a in msg.content["arrays"].to_numpy_ndarrays()]
    metrics = MetricRecord({"num-examples": 1, "partition-id": pid})
    return Message(content=RecordDict({"arrays": ArrayRecord(arrays), "metrics": metrics}), reply_to=msg)
'''


def write_probe_app(folder: Path | str) -> Path:
    """Write the probe Flower app to ``folder`` (returns it); ``flwr run FOLDER`` runs it on any deployment."""
    root = Path(folder)
    pkg = root / "fedcogenprobe"
    pkg.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(_PROBE_PYPROJECT)
    (pkg / "__init__.py").write_text('"""fedcogen deployment probe app."""\n')
    (pkg / "server_app.py").write_text(_PROBE_SERVER)
    (pkg / "client_app.py").write_text(_PROBE_CLIENT)
    return root
