"""Simulation driver: run the real Flower ServerApp/ClientApp in Flower's simulation engine.

Why a driver on top of ``flwr run``: experiments and benchmarks need to launch many runs from
Python with a typed config, then read the results back. The apps are exactly the ones a
deployment uses (``fedcogen.server.fl_serverapp`` / ``fedcogen.client.fl_clientapp``); only the
transport differs (Ray actors instead of SuperNodes). Every setting is passed to the ServerApp,
which forwards the client-side ones inside its messages, so the engine's (empty) run config does
not matter.

``flwr.simulation.run_simulation`` is deprecated in flwr 1.41 in favour of ``flwr run`` (which
needs a SuperLink and installs the app as a FAB); it is still the supported in-process entry point
and is what we use here. ``flwr run .`` works too with the ``[tool.flwr.app]`` section of
pyproject.toml.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcogen.protocols.fl_messages import FLSettings
from fedcogen.simulations.plots import plot_federation

log = logging.getLogger(__name__)


@dataclass
class SimulationConfig:
    """A federated sparse-LoRA simulation (all fields overridable from ``fedcogen simulate``).

    Communication: ``density`` is the top-k fraction of each client update (``scope`` per tensor or
    global), ``quant`` its value precision, ``index_coding`` the index code; the broadcast uses
    ``down_density`` (0 = ``density * clients_per_round``) and ``down_quant`` ("" = ``quant``).
    ``density=1, quant="fp32"`` is plain dense FedAvg.
    """

    model: str = "tiny"
    data_dir: str = ""  # "" = <out_dir>/data (generated deterministically from seed and num_clients)
    num_clients: int = 3
    clients_per_round: int = 3
    rounds: int = 2
    local_steps: int = 4
    batch_size: int = 4
    lr: float = 5e-4
    max_seq_len: int = 256
    history_examples: bool = False
    fact_swaps: int = 0
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: str = "q_proj,v_proj"
    density: float = 0.01
    scope: str = "per_tensor"
    quant: str = "int8"
    index_coding: str = "auto"
    down_density: float = 0.0
    down_quant: str = ""
    server_opt: str = "fedavg"
    server_lr: float = 1.0
    min_fit_clients: int = 1
    round_timeout: float = 600.0
    eval_every: int = 1
    eval_on: str = "all"
    max_update_norm: float = 1e4
    max_update_bytes: int = 64 * 1024 * 1024
    seed: int = 0
    out_dir: str = "runs/federation"
    resume: bool = False
    stop_after: int = 0
    dp_mode: str = "none"
    dp_clip_norm: float = 1.0
    dp_noise_multiplier: float = 0.0
    dp_delta: float = 1e-5
    dp_target_epsilon: float = 0.0
    fail_prob: float = 0.0
    fail_nodes: str = ""
    num_cpus_per_client: float = 0.5
    engine: str = "flower"  # "flower" (Ray simulation engine) | "loopback" (same apps, one process)
    persist_client_state: bool = True  # clients keep their state under <out_dir>/clients (resume needs it)

    def __post_init__(self) -> None:
        if self.num_clients < 1:
            raise ValueError(f"num_clients must be >= 1 (got {self.num_clients})")
        if not 1 <= self.clients_per_round <= self.num_clients:
            raise ValueError(f"clients_per_round must be in [1, num_clients={self.num_clients}] "
                             f"(got {self.clients_per_round})")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1 (got {self.rounds})")
        if self.min_fit_clients > self.clients_per_round:
            raise ValueError(f"min_fit_clients={self.min_fit_clients} > clients_per_round={self.clients_per_round}:"
                             " every round would abort")
        if not 0 < self.density <= 1:
            raise ValueError(f"density must be in (0, 1] (got {self.density})")
        if self.server_opt not in ("fedavg", "fedadam", "fedyogi"):
            raise ValueError(f"server_opt must be fedavg, fedadam or fedyogi (got {self.server_opt!r})")
        if self.quant not in ("fp32", "fp16", "int8"):
            raise ValueError(f"quant must be fp32, fp16 or int8 (got {self.quant!r})")
        if self.dp_mode not in ("none", "client", "server"):
            raise ValueError(f"dp_mode must be none, client or server (got {self.dp_mode!r})")
        if self.eval_on not in ("all", "round"):
            raise ValueError(f"eval_on must be 'all' or 'round' (got {self.eval_on!r})")
        if self.engine not in ("flower", "loopback"):
            raise ValueError(f"engine must be 'flower' or 'loopback' (got {self.engine!r})")
        if not 0 < self.num_cpus_per_client:
            raise ValueError("num_cpus_per_client must be > 0")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SimulationConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown simulation setting(s): {', '.join(unknown)} (known: {', '.join(sorted(names))})")
        return cls(**values)

    def settings(self) -> FLSettings:
        """The run config the ServerApp receives."""
        values = dataclasses.asdict(self)
        values.pop("engine")
        out = Path(self.out_dir)
        values["data_dir"] = self.data_dir or str(out / "data")
        values["client_state_dir"] = str(out / "clients") if self.persist_client_state else ""
        return FLSettings.from_mapping(values)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or JSON config file (a ``[simulation]`` table in TOML is accepted as well)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {p} does not exist")
    if p.suffix == ".json":
        data = json.loads(p.read_text())
    else:
        import tomllib

        data = tomllib.loads(p.read_text())
    if isinstance(data.get("simulation"), dict):
        data = data["simulation"]
    return data


def run_federation(cfg: SimulationConfig) -> dict[str, Any]:
    """Run a full simulation and return the metrics dict (also written to ``<out_dir>/metrics.json``).

    Outputs in ``out_dir``: ``metrics.json`` / ``metrics.md`` (per round: train loss, per-client
    validation loss + perplexity, bytes up/down, rejected counts, failures), ``ledger.json`` (one entry
    per message with its serialized size), ``checkpoint.npz``, ``loss_vs_round.png`` and
    ``loss_vs_bytes.png``, and per-client state under ``clients/``.
    """
    from flwr.simulation import run_simulation

    from fedcogen.client.fl_clientapp import app as client_app
    from fedcogen.client.fl_clientapp import federation_for
    from fedcogen.server.fl_serverapp import make_server_app

    settings = cfg.settings()
    from fedcogen.client import fault_app

    if fault_app.needs_fault_app(settings):  # failure hooks live only in the test-only ClientApp
        client_app = fault_app.app
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.resume:
        for name in ("checkpoint.npz", "metrics.json", "ledger.json"):
            (out / name).unlink(missing_ok=True)
        import shutil

        shutil.rmtree(out / "clients", ignore_errors=True)
    federation_for(settings)  # generate data before any worker starts
    if cfg.engine == "loopback":
        from fedcogen.server.fl_serverapp import FederatedServer

        grid = _loopback_grid_class()(client_app, cfg.num_clients, seed=cfg.seed)
        return _with_plots(FederatedServer(grid, settings).run(), out)
    server_app = make_server_app(settings.to_config())
    cpus = os.cpu_count() or 2
    backend_config = {
        "client_resources": {"num_cpus": cfg.num_cpus_per_client, "num_gpus": 0.0},
        # worker output (model loading bars, library warnings) reaches the terminal only with -v;
        # client errors still come back in the replies and are logged by the server
        "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False,
                      "log_to_driver": logging.getLogger().isEnabledFor(logging.DEBUG)},
    }
    log.info("simulation: %d clients (%d per round), %d rounds, model %s, density %g, out %s",
             cfg.num_clients, cfg.clients_per_round, cfg.rounds, cfg.model, cfg.density, out)
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=cfg.num_clients,
        backend_config=backend_config,
    )
    metrics_path = out / "metrics.json"
    if not metrics_path.is_file():
        raise RuntimeError(f"simulation ended without writing {metrics_path}; see the log above")
    return _with_plots(json.loads(metrics_path.read_text()), out)


def _with_plots(result: dict[str, Any], out: Path) -> dict[str, Any]:
    """Draw the run's plots next to its metrics (the ServerApp only writes data)."""
    try:
        plot_federation(result, out)
    except Exception as exc:  # plots are a convenience; never lose a run over them
        log.warning("plots not written: %s", exc)
    return result


def __getattr__(name: str) -> Any:
    # LoopbackGrid subclasses flwr's Grid; built on first use so `fedcogen --help` does not import flwr.
    if name == "LoopbackGrid":
        return _loopback_grid_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.lru_cache(maxsize=1)
def _loopback_grid_class() -> type:
    from flwr.serverapp import Grid

    class LoopbackGrid(Grid):
        """A Flower ``Grid`` that delivers every message through Flower's serde to an in-process ClientApp.

        Why: tests and benchmarks need the *same* ServerApp logic and ClientApp handlers without Ray's
        start-up cost and scheduling noise. Each message is serialised to its protobuf bytes, parsed
        back, handled by the real ``ClientApp`` with a per-node ``Context`` (persistent ``state``), and
        the reply travels back the same way. ``wire`` records the byte length of every serialised
        message, measured here independently of the server's ledger. Client exceptions become Flower
        error replies, exactly like the simulation engine does.
        """

        def __init__(self, client_app: Any, num_nodes: int, seed: int = 0) -> None:
            import random

            from flwr.app import Context, RecordDict
            from flwr.common.constant import SUPERLINK_NODE_ID
            from flwr.supercore.task_identity import TaskIdentity

            # Messages take their sender identity from the process's task identity (set by Flower's own
            # runtimes); a bare process has none, so act as the SuperLink-side task of run 1.
            TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
            rng = random.Random(f"loopback-{seed}-{os.getpid()}-{id(self)}")
            self.client_app = client_app
            self.node_ids = [rng.getrandbits(62) + 2 for _ in range(num_nodes)]
            self.contexts = {
                nid: Context(run_id=1, node_id=nid, node_config={"partition-id": i, "num-partitions": num_nodes},
                             state=RecordDict(), run_config={})
                for i, nid in enumerate(self.node_ids)
            }
            self.wire: list[tuple[str, int, int]] = []  # (direction, node id, serialised bytes)
            self._run: Any = None

        def set_run(self, run: Any) -> None:
            self._run = run

        @property
        def run(self) -> Any:
            return self._run

        def create_message(self, content: Any, message_type: str, dst_node_id: int, group_id: str,
                           ttl: float | None = None) -> Any:
            from flwr.app import Message

            return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

        def get_node_ids(self) -> list[int]:
            return list(self.node_ids)

        def get_nodes(self) -> list[Any]:
            return []

        def push_messages(self, messages: Any) -> list[str]:
            raise NotImplementedError("LoopbackGrid delivers synchronously: use send_and_receive")

        def pull_messages(self, message_ids: Any) -> list[Any]:
            raise NotImplementedError("LoopbackGrid delivers synchronously: use send_and_receive")

        def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Any]:
            from uuid import uuid4

            from flwr.app import Error
            from flwr.common.constant import ErrorCode
            from flwr.common.serde import message_from_proto, message_to_proto
            from flwr.proto.message_pb2 import Message as ProtoMessage

            replies = []
            for msg in messages:
                msg.metadata.__dict__["_message_id"] = str(uuid4())  # what Flower's in-memory grid does
                node = int(msg.metadata.dst_node_id)
                data = message_to_proto(msg).SerializeToString()
                self.wire.append(("down", node, len(data)))
                received = message_from_proto(ProtoMessage.FromString(data))
                try:
                    reply = self.client_app(received, self.contexts[node])
                except Exception as exc:  # noqa: BLE001 - the engine turns client exceptions into error replies
                    reply = received.create_error_reply(
                        Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{type(exc).__name__}: {exc}")
                    )
                reply.metadata.__dict__["_message_id"] = str(uuid4())
                back = message_to_proto(reply).SerializeToString()
                self.wire.append(("up", node, len(back)))
                replies.append(message_from_proto(ProtoMessage.FromString(back)))
            return replies

    return LoopbackGrid



def load_run_adapter(run_dir: str | Path) -> tuple[Any, dict[str, Any]]:
    """The PEFT model of a finished federation run with its final global adapter loaded.

    Returns ``(LoraModel, settings dict)``; the model is the per-process cached PEFT copy.
    """
    from fedcogen.lora_adapter import LoraSpec, lora_model, set_adapter
    from fedcogen.server.checkpoint import load_checkpoint

    arrays, meta = load_checkpoint(run_dir)
    s = meta.get("settings", {})
    spec = LoraSpec(r=int(s["lora_r"]), alpha=int(s["lora_alpha"]), dropout=float(s["lora_dropout"]),
                    targets=LoraSpec.parse_targets(s["lora_targets"]))
    adapter = {k[len("global/"):]: v for k, v in arrays.items() if k.startswith("global/")}
    if not adapter:
        raise ValueError(f"checkpoint in {run_dir} holds no global adapter")
    lm = lora_model(s["model"], int(s["seed"]), spec)
    set_adapter(lm, adapter)
    return lm, s


def export_adapter(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write the federated global adapter of a finished run as a PEFT ``save_pretrained`` folder.

    Why: the federation checkpoints plain numpy tensors (what crosses the wire); devices load adapters
    for generation (``fedcogen generate --adapter``, ``fedcogen eval --adapter``) in PEFT's own format.
    """
    lm, _ = load_run_adapter(run_dir)
    target = Path(out_dir) if out_dir else Path(run_dir) / "adapter"
    lm.model.save_pretrained(str(target))
    log.info("exported federated adapter to %s", target)
    return target
