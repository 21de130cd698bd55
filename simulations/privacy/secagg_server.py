"""The server side of sparse secure aggregation: a FedAvg strategy over the flat adapter behind
Flower's ``SecAggPlusWorkflow``, and a recording grid that counts every message's bytes.

The server learns only the masked vectors and, after unmasking, the mean at the public support
(see :mod:`fedcogen.secagg`). The masked vectors it received are kept for inspection (tests check
they reveal nothing).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedcogen.protocols.codecs.sparse_codec import decode_sparse, densify
from fedcogen.secagg import SecAggRunConfig, round_seed, shared_support


@dataclass
class Recorder:
    """What the server side saw: bytes per stage/direction, masked vectors, aggregates, timings."""

    bytes_down: dict[str, int] = field(default_factory=dict)
    bytes_up: dict[str, int] = field(default_factory=dict)
    messages: int = 0
    masked_vectors: list[dict[str, Any]] = field(default_factory=list)
    aggregates: list[dict[str, Any]] = field(default_factory=list)
    round_seconds: list[float] = field(default_factory=list)
    keep_masked: bool = True
    final: np.ndarray | None = None  # the global vector after the last round
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, direction: str, stage: str, n: int) -> None:
        with self._lock:
            book = self.bytes_down if direction == "down" else self.bytes_up
            book[stage] = book.get(stage, 0) + int(n)
            self.messages += 1

    def summary(self) -> dict[str, Any]:
        return {
            "bytes_down": dict(self.bytes_down),
            "bytes_up": dict(self.bytes_up),
            "total_bytes_down": int(sum(self.bytes_down.values())),
            "total_bytes_up": int(sum(self.bytes_up.values())),
            "messages": self.messages,
            "round_seconds": list(self.round_seconds),
        }


def _stage_of(content: Any) -> str:
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

    cfgs = content.config_records
    if RECORD_KEY_CONFIGS in cfgs and Key.STAGE in cfgs[RECORD_KEY_CONFIGS]:
        return str(cfgs[RECORD_KEY_CONFIGS][Key.STAGE])
    return "fit"


def _message_bytes(msg: Any) -> int:
    from flwr.common.serde import message_to_proto, recorddict_to_proto

    try:
        return int(message_to_proto(msg).ByteSize())
    except Exception:  # noqa: BLE001 - an outgoing message without full metadata: payload only
        return int(recorddict_to_proto(msg.content).ByteSize())


class RecordingGrid:
    """Wraps the server's Grid: counts serialized bytes of every message and keeps masked vectors."""

    def __init__(self, grid: Any, recorder: Recorder, server_round: int) -> None:
        self._grid = grid
        self._rec = recorder
        self._round = server_round

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Any, *args: Any, **kwargs: Any) -> Any:
        from flwr.common import bytes_to_ndarray
        from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

        messages = list(messages)
        stages = {}
        for m in messages:
            stage = _stage_of(m.content)
            stages[m.metadata.dst_node_id] = stage
            self._rec.add("down", stage, _message_bytes(m))
        replies = list(self._grid.send_and_receive(messages, *args, **kwargs))
        for r in replies:
            stage = stages.get(r.metadata.src_node_id, "fit")
            self._rec.add("up", stage, _message_bytes(r))
            if r.has_error() or not self._rec.keep_masked:
                continue
            cfgs = r.content.config_records
            if RECORD_KEY_CONFIGS in cfgs and Key.MASKED_PARAMETERS in cfgs[RECORD_KEY_CONFIGS]:
                vecs = [bytes_to_ndarray(b) for b in cfgs[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]]
                self._rec.masked_vectors.append(
                    {"round": self._round, "node_id": int(r.metadata.src_node_id), "vectors": vecs}
                )
        return replies


def make_server_app(cfg: SecAggRunConfig, recorder: Recorder, initial: np.ndarray) -> Any:
    """Legacy ServerApp: FedAvg-style strategy holding the flat global adapter; SecAgg+ fit workflow."""
    from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    class _Strategy(FedAvg):
        def __init__(self) -> None:
            super().__init__(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=cfg.run.num_clients,
                             min_available_clients=cfg.run.num_clients,
                             initial_parameters=ndarrays_to_parameters([initial]))
            self.global_flat = initial.astype(np.float32).copy()

        def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list:
            pairs = super().configure_fit(server_round, parameters, client_manager)
            conf = {"round": server_round, "support_seed": round_seed(cfg.run.seed, server_round), "k": cfg.k}
            return [(proxy, FitIns(ins.parameters, dict(conf))) for proxy, ins in pairs]

        def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple:
            if not results:
                return None, {}
            n = len(results)
            dim = self.global_flat.size
            if cfg.mode == "plain":
                total = np.zeros(dim, np.float64)
                for _, res in results:
                    blob = parameters_to_ndarrays(res.parameters)[0].tobytes()
                    total += densify(decode_sparse(blob, {"flat": (dim,)}))["flat"].reshape(-1)
                mean = (total / n).astype(np.float32)
                support = np.flatnonzero(mean)
                self.global_flat += mean
                agg_vals = mean[support]
            else:
                # After unmasking every FitRes carries the same (weighted-mean) vector.
                agg_vals = parameters_to_ndarrays(results[0][1].parameters)[0].astype(np.float32)
                if cfg.mode == "sparse":
                    support = shared_support(round_seed(cfg.run.seed, server_round), dim, cfg.k)
                else:
                    support = np.arange(dim)
                self.global_flat[support] += agg_vals
            recorder.aggregates.append({"round": server_round, "n": n, "support": support, "mean": agg_vals})
            return ndarrays_to_parameters([self.global_flat]), {}

    class _Timed:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __call__(self, grid: Any, context: Any) -> None:
            from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD
            from flwr.server.workflow.constant import Key as WfKey

            rnd = int(context.state.config_records[MAIN_CONFIGS_RECORD][WfKey.CURRENT_ROUND])
            t0 = time.perf_counter()
            self.inner(RecordingGrid(grid, recorder, rnd), context)
            recorder.round_seconds.append(time.perf_counter() - t0)

    app = ServerApp()

    @app.main()
    def main(grid: Any, context: Any) -> None:
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=cfg.run.rounds), strategy=_Strategy())
        if cfg.mode == "plain":
            from flwr.server.workflow.default_workflows import default_fit_workflow

            fit = _Timed(default_fit_workflow)
        else:
            fit = _Timed(SecAggPlusWorkflow(
                num_shares=cfg.num_shares,
                reconstruction_threshold=cfg.reconstruction_threshold,
                max_weight=1.0,
                clipping_range=cfg.clipping_range,
                quantization_range=cfg.quantization_range,
                modulus_range=cfg.modulus_range,
            ))
        DefaultWorkflow(fit_workflow=fit)(grid, legacy)
        recorder.final = legacy.strategy.global_flat.copy()

    return app
