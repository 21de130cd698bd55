"""A training round through Flower's SecAgg+ (``secagg = "secaggplus"``): the server learns only the mean.

Flower 1.41 runs SecAgg+ as a workflow over a ``LegacyContext`` (``SecAggPlusWorkflow``: setup, key
sharing, masked upload, unmasking) that asks a legacy ``Strategy`` whom to train and hands it the
unmasked result. :class:`_RoundStrategy` is that strategy for one round of our own loop: it returns the
sampled nodes with a ``FitIns`` whose config is our train config (settings + the sparse broadcast
patch: the download stays the sparse broadcast), and keeps the aggregate. Every message of every
stage goes through the server's ledger grid (:mod:`fedcogen.server.fl.byte_ledger`), booked under its stage.

What the server gets is the uniform mean of the clients' values at the round's shared random
support (weights 1, ``max_weight`` 1); it cannot check any single update (that is the point), so
clipping is the clients' job, done before the values leave them (:mod:`fedcogen.client.fl.secagg_train`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedcogen.run_config import FLSettings
from fedcogen.secagg import round_support, unflatten

log = logging.getLogger(__name__)

QUANTIZATION_RANGE = 2**22  # SecAgg+ fixed-point levels over [-range, range]
MODULUS_RANGE = 2**32  # sums of up to 2**10 clients fit
RECONSTRUCTION_THRESHOLD = 0.6  # share of a node's neighbours needed to unmask it


def secagg_stage(msg: Any, default: str) -> str:
    """The SecAgg+ workflow stage a message carries (``default`` when it carries none)."""
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

    if msg.has_content() and RECORD_KEY_CONFIGS in msg.content.config_records:
        return str(msg.content.config_records[RECORD_KEY_CONFIGS].get(Key.STAGE, default))
    return default


def secagg_phase(msg: Any) -> str:
    """The ledger phase of a SecAgg+ message: its workflow stage (the masked upload is the training)."""
    stage = secagg_stage(msg, "train")
    return "train" if stage == "collect_masked_vectors" else f"secagg_{stage}"


@dataclass(frozen=True)
class SecureRoundInputs:
    """What a SecAgg+ round needs from the server: settings, the sampled nodes' train configs, who is who,
    and the adapter's shapes."""

    settings: FLSettings
    server_round: int
    configs: Mapping[int, dict[str, Any]]  # sampled node -> train config
    client_of: Mapping[int, str]
    shapes: Mapping[str, tuple[int, ...]]


def secure_round(grid: Any, inputs: SecureRoundInputs) -> tuple[dict[str, np.ndarray] | None, dict[str, Any]]:
    """Run SecAgg+ over the sampled nodes through ``grid`` (the server's ledger grid, phases by
    :func:`secagg_phase`); returns (mean adapter or None, round info).

    The info holds ``accepted`` (client ids whose masked vector entered the sum), ``metrics`` (their
    FitRes metrics) and ``failures`` (clients that dropped).
    """
    from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
    from flwr.common import FitIns, Parameters
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.strategy import Strategy
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
    from flwr.server.workflow.constant import Key as WorkflowKey

    server_round, configs, nodes = inputs.server_round, inputs.configs, list(inputs.configs)
    info: dict[str, Any] = {"accepted": [], "metrics": [], "failures": {}, "mean": None}

    class _RoundStrategy(Strategy):
        def initialize_parameters(self, client_manager: Any) -> None:
            return None

        def configure_fit(self, rnd: int, parameters: Any, client_manager: Any) -> list:
            empty = Parameters(tensors=[], tensor_type="")  # the download is the patch in the config
            return [(GridClientProxy(n, grid, 0), FitIns(empty, configs[n])) for n in nodes]

        def aggregate_fit(self, rnd: int, results: list, failures: list) -> tuple[None, dict]:
            from flwr.common import parameters_to_ndarrays

            for _proxy, res in results:
                info["accepted"].append(str(res.metrics.get("client_id", _proxy.node_id)))
                info["metrics"].append(dict(res.metrics))
            if results:
                info["mean"] = parameters_to_ndarrays(results[0][1].parameters)[0].astype(np.float32)
            return None, {}

        def configure_evaluate(self, rnd: int, parameters: Any, client_manager: Any) -> list:
            return []

        def aggregate_evaluate(self, rnd: int, results: list, failures: list) -> tuple[None, dict]:
            return None, {}

        def evaluate(self, rnd: int, parameters: Any) -> None:
            return None

    state = RecordDict()
    state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round})
    state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
    base = Context(run_id=0, node_id=0, node_config={}, state=state, run_config={})
    legacy = LegacyContext(context=base, config=ServerConfig(num_rounds=1), strategy=_RoundStrategy())
    s = inputs.settings
    workflow = SecAggPlusWorkflow(num_shares=1.0, reconstruction_threshold=RECONSTRUCTION_THRESHOLD, max_weight=1.0,
                                  clipping_range=s.secagg_range, quantization_range=QUANTIZATION_RANGE,
                                  modulus_range=MODULUS_RANGE, timeout=s.round_timeout)
    workflow(grid, legacy)
    accepted = set(info["accepted"])
    info["failures"] = {inputs.client_of[n]: "dropped out of SecAgg+" for n in nodes if inputs.client_of[n] not in accepted}
    if info["mean"] is None:
        return None, info
    dim = int(sum(np.prod(v) for v in inputs.shapes.values()))
    support = round_support(s.round_settings(server_round), server_round, dim)  # warm-up rounds: every entry
    if info["mean"].size != support.size:
        raise RuntimeError(f"SecAgg+ returned {info['mean'].size} values for a support of {support.size}")
    flat = np.zeros(dim, np.float32)
    flat[support] = info["mean"]
    return unflatten(flat, dict(inputs.shapes)), info


