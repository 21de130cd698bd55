"""The server side of sparse secure aggregation: a FedAvg strategy over the flat adapter behind
Flower's ``SecAggPlusWorkflow``, and a recording grid that books every message in the server's byte ledger.

The server learns only the masked vectors and, after unmasking, the mean at the public support
(see :mod:`fedcogen.secagg`). The masked vectors it received are kept for inspection (tests check
they reveal nothing).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedcogen.protocols.codecs.sparse_codec import decode_sparse, densify
from fedcogen.secagg import SecAggRunConfig, round_seed, shared_support
from fedcogen.server.fl.byte_ledger import ByteLedger, LedgerGrid, by_phase
from fedcogen.server.fl.secagg_round import secagg_stage


@dataclass
class Recorder:
    """What the server side saw: every message booked in a byte ledger (:mod:`fedcogen.server.fl.byte_ledger`,
    the same one the federated server uses), masked vectors, aggregates, timings."""

    ledger: list[dict[str, Any]] = field(default_factory=list)
    bytes_total: int = 0
    masked_vectors: list[dict[str, Any]] = field(default_factory=list)
    aggregates: list[dict[str, Any]] = field(default_factory=list)
    round_seconds: list[float] = field(default_factory=list)
    keep_masked: bool = True
    final: np.ndarray | None = None  # the global vector after the last round

    def summary(self) -> dict[str, Any]:
        down, up = by_phase(self.ledger, "down"), by_phase(self.ledger, "up")
        return {
            "bytes_down": down,
            "bytes_up": up,
            "total_bytes_down": int(sum(down.values())),
            "total_bytes_up": int(sum(up.values())),
            "messages": len(self.ledger),
            "round_seconds": list(self.round_seconds),
        }


def recording_grid(grid: Any, recorder: Recorder, server_round: int) -> LedgerGrid:
    """The server's Grid with every message booked by stage, keeping the masked vectors it received."""

    def keep_masked(rep: Any) -> None:
        from flwr.common import bytes_to_ndarray
        from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

        if rep.has_error() or not recorder.keep_masked:
            return
        cfgs = rep.content.config_records
        if RECORD_KEY_CONFIGS in cfgs and Key.MASKED_PARAMETERS in cfgs[RECORD_KEY_CONFIGS]:
            vecs = [bytes_to_ndarray(b) for b in cfgs[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]]
            recorder.masked_vectors.append({"round": server_round, "node_id": int(rep.metadata.src_node_id),
                                            "vectors": vecs})

    return LedgerGrid(grid, ByteLedger(recorder), server_round, lambda m: secagg_stage(m, "fit"),
                      on_reply=keep_masked)


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
            self.inner(recording_grid(grid, recorder, rnd), context)
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
