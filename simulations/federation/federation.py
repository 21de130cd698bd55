"""Simulation driver: run the real Flower ServerApp/ClientApp in Flower's simulation engine.

Why a driver on top of ``flwr run``: experiments and benchmarks need to launch many runs from
Python with a typed config, then read the results back. The apps are exactly the ones a
deployment uses (``fedcogen.server.fl.fl_serverapp`` / ``fedcogen.client.fl.fl_clientapp``); only the
transport differs (Ray actors instead of SuperNodes).

``engine="flower"`` runs ``flwr run`` on the project folder (the same FAB as ``flwr run .``) with
the whole run config as ``--run-config`` overrides (:mod:`fedcogen.simulations.federation.flwr_run`): flwr
1.41 deprecates ``flwr.simulation.run_simulation`` and has no other in-process simulation API.
``engine="loopback"`` runs the same apps in this process over a serialising in-memory grid.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcogen.accelerator import resolve_device
from fedcogen.client.fl.fl_clientapp import app as real_app
from fedcogen.client.fl.node_data import federation_for
from fedcogen.config_file import read_config_file
from fedcogen.lora_adapter import LoraSpec, adapter_layout, lora_model, lora_spec, set_adapter
from fedcogen.lora_exact import fold_cores
from fedcogen.run_config import RUN_KEYS, FLSettings, attributes_of, coerce, flatten, load_run_config
from fedcogen.server.fl.checkpoint import has_checkpoint, load_checkpoint
from fedcogen.server.fl.fl_outputs import read_metrics
from fedcogen.server.fl.fl_serverapp import FederatedServer
from fedcogen.server.fl.fl_state import check_resumable, previous_run_files, start_fresh
from fedcogen.simulations.evaluation.plots import plot_federation
from fedcogen.simulations.federation import fault_app
from fedcogen.simulations.federation.flower_app import FAULT_CLIENTAPP, FEDCOGEN_CLIENTAPP, app_dir_for
from fedcogen.simulations.federation.flwr_run import LocalFederation, RunFailed, run_flwr_app

log = logging.getLogger(__name__)


@dataclass
class SimulationConfig:
    """A federated sparse-LoRA simulation: the run configuration plus how to host it in one machine.

    ``run`` is the same :class:`FLSettings` that ``flwr run .`` reads from pyproject, so every run
    setting has one default, one validation and one help text; the fields here only choose the
    engine that hosts the Flower apps.
    """

    run: FLSettings = field(default_factory=FLSettings)
    num_cpus_per_client: float = field(default=0.5, metadata={"help": "Ray CPU share per simulated client"})
    num_gpus_per_client: float = field(default=0.0, metadata={
        "help": "Ray GPU share per simulated client (0.25 = four clients share one GPU; 0 = clients see no GPU; "
                "docs/gpu.md)"})
    engine: str = field(default="flower", metadata={
        "help": "flower (Flower simulation engine) or loopback (same apps, in one process)"})
    persist_client_state: bool = field(default=True, metadata={
        "help": "clients persist their state under out_dir/clients (needed for resume)"})
    ray_address: str = field(default="", metadata={
        "help": "run the flower engine on an existing Ray cluster (HOST:PORT of its head, as `ray start "
                "--head` prints); '' = a private Ray instance on this machine"})

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)} (got {self.engine!r})")
        if not 0 < self.num_cpus_per_client:
            raise ValueError("num_cpus_per_client must be > 0")
        if not 0 <= self.num_gpus_per_client:
            raise ValueError("num_gpus_per_client must be >= 0")
        if self.engine == "flower" and self.run.device.startswith("cuda") and self.num_gpus_per_client == 0:
            raise ValueError(f"device {self.run.device!r} in a Flower simulation needs num_gpus_per_client > 0 "
                             "(e.g. 0.25: four clients share a GPU); Ray hides the GPUs from clients that reserve none")
        if self.ray_address and self.engine != "flower":
            raise ValueError("ray_address needs engine 'flower' (the loopback engine runs in this process)")
        if self.run.clients_per_round > self.run.num_clients:
            raise ValueError(f"clients_per_round must be in [1, num_clients={self.run.num_clients}] "
                             f"(got {self.run.clients_per_round})")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SimulationConfig:
        """Flat settings (run-config keys and this class's own fields, or a nested ``run`` table)."""
        own = {f.name for f in dataclasses.fields(cls)} - {"run"}
        flat = dict(values)
        run_values = dict(flat.pop("run", None) or {})
        run_values.update({k: v for k, v in flat.items() if k not in own})
        kwargs = {k: coerce(k, getattr(cls, k), v) for k, v in flat.items() if k in own}
        return cls(run=FLSettings.from_mapping(run_values), **kwargs)

    def to_file_values(self) -> dict[str, Any]:
        """The config-file view: grouped run keys and this class's own fields (what ``--print-config``
        shows and :func:`load_config_file` reads back)."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "run"}
        return {**self.run.to_run_config(), **own}

    def settings(self) -> FLSettings:
        """The run config the ServerApp receives (data and client-state folders resolved under out_dir)."""
        state = self.run.client_state_dir or str(Path(self.run.out_dir) / "clients")
        return load_run_config(self.run.to_run_config(),
                               {RUN_KEYS["client_state_dir"]: state if self.persist_client_state else ""})


ENGINES = ("flower", "loopback")


PRESETS = Path(__file__).with_name("presets")  # named run settings, e.g. the benchmark's best (lean-comm)


def preset_file(name: str) -> Path:
    """The config file of a named preset in :data:`PRESETS`; an unknown name is an error listing them."""
    path = PRESETS / f"{name}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in PRESETS.glob("*.toml"))
        raise ValueError(f"unknown preset '{name}' (known: {', '.join(known)})")
    return path


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A TOML or JSON config file as :meth:`SimulationConfig.from_dict` reads it.

    Run settings are written as in pyproject's ``[tool.flwr.app.config]`` (grouped keys, dotted
    ``lora.r = 4`` or tables ``[lora]``), the same keys ``flwr run --run-config`` takes; the
    engine's own fields (``engine``, ``num_cpus_per_client``...) by name. A ``[simulation]`` table
    holding all of it is accepted as well. Flat run keys from before the grouping are errors naming
    the new key (:func:`fedcogen.run_config.attribute_for`).
    """
    data = read_config_file(path, table="simulation")
    own = {f.name for f in dataclasses.fields(SimulationConfig)} - {"run"}
    values = flatten(data)
    return {**attributes_of({k: v for k, v in values.items() if k not in own}),
            **{k: v for k, v in values.items() if k in own}}


def run_federation(cfg: SimulationConfig) -> dict[str, Any]:
    """Run a full simulation and return the metrics dict (also written to ``<out_dir>/metrics.json``).

    Outputs in ``out_dir``: ``metrics.json`` / ``metrics.md`` (per round: train loss, per-client
    validation loss + perplexity, bytes up/down, rejected counts, failures), ``ledger.json`` (one entry
    per message with its serialized size), ``checkpoint.npz``, ``loss_vs_round.png`` and
    ``loss_vs_bytes.png``, and per-client state under ``clients/``.
    """

    settings = cfg.settings()
    if not cfg.ray_address:  # every client runs on this machine: a device it lacks fails here, before round 1
        resolve_device(settings.device)
    # the simulation engine runs in other processes (other working directories): absolute paths only
    settings = settings.replace(**{k: str(Path(getattr(settings, k)).resolve())
                                   for k in ("out_dir", "data_dir", "client_state_dir") if getattr(settings, k)})
    fault = fault_app.needs_fault_app(settings)  # failure hooks live only in the test-only ClientApp
    out = Path(settings.out_dir)
    preflight(settings)
    out.mkdir(parents=True, exist_ok=True)
    if not settings.resume or not has_checkpoint(out):
        start_fresh(out, settings.replace(overwrite=settings.overwrite or settings.resume))
        shutil.rmtree(out / "clients", ignore_errors=True)
    federation_for(settings)  # generate data before any worker starts
    if cfg.engine == "loopback":
        client_app = fault_app.app if fault else real_app
        grid = _loopback_grid_class()(client_app, settings.num_clients, seed=settings.seed)
        return _with_plots(check_result(FederatedServer(grid, settings).run(), settings, out), out)
    verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
    log.info("simulation: %d clients (%d per round), %d rounds, model %s, density %g, out %s",
             settings.num_clients, settings.clients_per_round, settings.rounds, settings.model, settings.density, out)
    app_dir = app_dir_for(FAULT_CLIENTAPP if fault else FEDCOGEN_CLIENTAPP, out)
    federation = LocalFederation(num_supernodes=settings.num_clients, num_cpus_per_client=cfg.num_cpus_per_client,
                                 num_gpus_per_client=cfg.num_gpus_per_client,
                                 log_to_driver=verbose, ray_address=cfg.ray_address)
    run_flwr_app(app_dir, settings.to_run_config(), federation, work_dir=out, echo=verbose)
    return _with_plots(finished_result(out, settings), out)


def preflight(settings: FLSettings) -> None:
    """Checks that take a second here but would fail only inside the ServerApp, after Flower and Ray
    started (tens of seconds): the model resolves to an architecture, a resume matches its
    checkpoint (every result-altering setting), a fresh start does not replace an earlier run unasked.
    Raises ``ValueError`` subclasses naming the problem."""
    adapter_layout(settings.model, settings.seed, lora_spec(settings))  # what the ServerApp does first
    out = Path(settings.out_dir)
    if settings.resume and has_checkpoint(out):
        check_resumable(out, settings)
    elif not settings.resume and not settings.overwrite and previous_run_files(out):
        start_fresh(out, settings)  # raises, naming the files


def finished_result(out: Path, settings: FLSettings) -> dict[str, Any]:
    """The metrics of the run that just ended in ``out``, refused unless it ran the rounds asked for
    (or stopped for a reason the settings give: DP budget, target loss)."""
    metrics_path = out / "metrics.json"
    if not metrics_path.is_file():
        raise RunFailed(f"the federation ended without writing {metrics_path}")
    return check_result(read_metrics(metrics_path), settings, out)


def check_result(result: dict[str, Any], settings: FLSettings, out: Path) -> dict[str, Any]:
    """``result`` if the run did what was asked: the rounds asked for (unless a stop the settings give:
    DP budget, target loss), and not every one of them aborted for want of client updates (the
    clients' own errors are then the cause)."""
    target = settings.rounds if not settings.stop_after else min(settings.rounds, settings.stop_after)
    done = int(result.get("completed_rounds", 0))
    if done < target and not result.get("stopped_reason"):
        raise RunFailed(f"the federation completed {done} of the {target} rounds asked for ({out / 'metrics.json'})")
    trained = [m for m in result.get("rounds", []) if int(m.get("round", 0)) >= 1]
    if trained and all(m.get("aborted") for m in trained):
        last = trained[-1]
        why = "; ".join(f"{cid}: {reason}" for cid, reason in sorted((last.get("failures") or {}).items()))
        raise RunFailed(f"every round was aborted (fewer than min_fit_clients={settings.min_fit_clients} "
                        f"accepted updates; rejected {last.get('rejected') or 'none'}); the model did not change. "
                        f"Clients in round {last.get('round')}: {why or 'no failures reported'}")
    return result


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

    arrays, meta = load_checkpoint(run_dir)
    s = meta.get("settings", {})
    spec = LoraSpec(r=int(s["lora_r"]), alpha=int(s["lora_alpha"]), dropout=float(s["lora_dropout"]),
                    targets=LoraSpec.parse_targets(s["lora_targets"]), mode=str(s.get("lora_mode", "lora")))
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
    model = lm.model
    if lm.spec.mode.startswith("core"):  # fold B @ R into a plain lora_B so the export is a standard PEFT adapter
        model = copy.deepcopy(lm.model)
        fold_cores(model)
    model.save_pretrained(str(target))
    log.info("exported federated adapter to %s", target)
    return target
