"""The client side of sparse secure aggregation: a legacy NumPyClient behind Flower's ``secaggplus_mod``.

Modes (see :mod:`fedcogen.secagg`): ``sparse`` sends the ``k`` values at the public support,
``dense`` the whole vector (both through SecAgg+), ``plain`` a top-k sparse codec blob (no SecAgg).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fedcogen.protocols.codecs.sparse_codec import CodecConfig, compress
from fedcogen.protocols.privacy.dp import secret_rng
from fedcogen.secagg import SecAggRunConfig, secure_values, shared_support

UpdateFn = Callable[[int, int, np.ndarray], np.ndarray]


def make_client_app(cfg: SecAggRunConfig, update_fn: UpdateFn) -> Any:
    """Legacy ClientApp: a NumPyClient whose ``fit`` returns what the mode sends (secaggplus_mod wraps it).

    ``update_fn(partition, server_round, global_flat)`` is the client's raw update this round (a
    synthetic vector or real LoRA training: the experiment decides); this app adds error feedback,
    the shared support, clipping and noise.
    """
    from flwr.app import ArrayRecord, Context
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod

    class _Client(NumPyClient):
        def __init__(self, context: Context) -> None:
            self.context = context
            self.partition = int(context.node_config.get("partition-id", 0))

        def _residual(self, dim: int) -> np.ndarray:
            rec = self.context.state.array_records.get("secagg_residual")
            if rec is None or "r" not in rec:
                return np.zeros(dim, np.float32)
            return rec["r"].numpy().astype(np.float32)

        def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict]:
            rnd = int(config["round"])
            global_flat = np.asarray(parameters[0], np.float32)
            dim = global_flat.size
            update = update_fn(self.partition, rnd, global_flat)
            dp = cfg.dp()
            # the DP noise share is secret (OS CSPRNG): the server holds the run seed
            rng = secret_rng() if dp.mode != "none" else np.random.default_rng([cfg.run.seed, 7, self.partition, rnd])
            if cfg.mode == "sparse":
                corrected = update + self._residual(dim)
                support = shared_support(int(config["support_seed"]), dim, int(config["k"]))
                out, residual = secure_values(corrected, support, dp, rng)
                self.context.state.array_records["secagg_residual"] = ArrayRecord({"r": _arr(residual)})
                return [out], 1, {"partition": self.partition}
            if cfg.mode == "dense":
                out, _ = secure_values(update, np.arange(dim), dp, rng)
                return [out], 1, {"partition": self.partition}
            # plain: top-k sparse codec blob, no secure aggregation (the non-secure baseline)
            blob, _, new_res = compress({"flat": update}, CodecConfig(density=cfg.run.density, quant="fp32"),
                                        {"flat": self._residual(dim)})
            self.context.state.array_records["secagg_residual"] = ArrayRecord({"r": _arr(new_res["flat"])})
            return [np.frombuffer(blob, dtype=np.uint8).copy()], 1, {"partition": self.partition}

    def client_fn(context: Context) -> Any:
        return _Client(context).to_client()

    mods = [secaggplus_mod] if cfg.mode in ("sparse", "dense") else []
    return ClientApp(client_fn=client_fn, mods=mods)


def _arr(x: np.ndarray) -> Any:
    from flwr.app import Array

    return Array(np.ascontiguousarray(x))
