"""Secure aggregation (SecAgg+) for *sparse* LoRA updates via a shared random support.

Problem: SecAgg+ (Bell et al. 2020; Flower's ``SecAggPlusWorkflow`` + ``secaggplus_mod``) sums
*equal-length dense* integer vectors under pairwise masks. Top-k sparsification picks different
positions on every client, so the masked vectors cannot be summed position-wise, and sending the
positions in the clear would leak which coordinates each client changed most (data-dependent).

Scheme (shared-random-mask sparsification): every round the server publishes a fresh seed in the
fit config. Every client derives the same pseudo-random support ``S`` (``k`` positions of the
flattened adapter) from it with :func:`shared_support`, adds its error-feedback residual to its
update, clips (and in client-mode DP, noises) the ``k`` values at ``S`` and sends just those ``k``
values through SecAgg+ as a dense length-``k`` vector. The server learns only the masked vectors
and, after unmasking, the *mean* over clients at ``S``; ``S`` itself is public and independent of
any data. Coordinates outside ``S`` stay in each client's residual and are sent in a later round
(error feedback), so nothing is lost in the long run; per round it is "random-k" instead of "top-k",
which converges more slowly per byte but is what secure summation allows.

Trust model: the server is honest-but-curious (follows the protocol, tries to learn from what it
sees); at least ``n - t`` of the ``n`` sampled clients are honest and do not collude with it
(``t`` = SecAgg+ reconstruction threshold margin). Under that model the server sees only the sum.
With ``DPConfig(mode="client")`` each client adds ``N(0, sigma^2 C^2 / n)`` to its ``k`` values, so
the released sum carries ``N(0, sigma^2 C^2)`` (see :mod:`fedcogen.protocols.dp`).

SecAgg+ specifics: Flower's mod quantises each value after clipping it to
``[-clipping_range, clipping_range]`` into ``quantization_range`` levels with stochastic rounding,
and multiplies by ``num_examples / max_weight`` first. We report ``num_examples=1`` and set
``max_weight=1`` so that the unmasked result is the plain mean with quantisation error about
``2 * clipping_range / quantization_range`` per client.

This module runs Flower's legacy server path (``LegacyContext`` + ``DefaultWorkflow(fit_workflow=
SecAggPlusWorkflow(...))``) and a legacy ``NumPyClient`` behind ``secaggplus_mod`` in the simulation
engine, in three modes for comparison: ``sparse`` (this scheme), ``dense`` (SecAgg+ over the whole
adapter vector) and ``plain`` (top-k sparse codec blobs without SecAgg, the non-secure baseline).
Every message crossing the server's grid is serialized with Flower's serde to count bytes, and
the masked vectors the server receives are kept for inspection (tests check they reveal nothing).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedcogen.protocols.dp import DPConfig, client_noise_std, clip_dense
from fedcogen.run_config import FLSettings

log = logging.getLogger(__name__)

MODES = ("sparse", "dense", "plain")


SECAGG_RUN = FLSettings(num_clients=4, clients_per_round=4, rounds=2, density=0.05, local_steps=2, lr=5e-3)


@dataclass
class SecAggRunConfig:
    """One secure-aggregation simulation.

    ``density`` = k / dim. ``update="synthetic"`` draws deterministic pseudo-random client updates
    of length ``dim`` (protocol tests and byte/time benchmarks); ``update="lora"`` trains the real
    LoRA adapter of ``model`` on each user's data from ``data_dir`` for ``local_steps`` steps.
    """

    mode: str = "sparse"
    # clients (all of them every round), rounds, density, seed, model/data/local training and DP of the run
    run: FLSettings = field(default_factory=lambda: SECAGG_RUN)
    dim: int = 4096
    update: str = "synthetic"
    num_shares: float = 1.0
    reconstruction_threshold: float = 0.6
    clipping_range: float = 4.0
    quantization_range: int = 2**22
    modulus_range: int = 2**32
    num_cpus: int = 2

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"secagg mode must be one of {MODES}, got {self.mode!r}")
        if self.run.num_clients < 2 and self.mode != "plain":
            raise ValueError("SecAgg+ needs at least 2 clients per round")
        if self.update not in ("synthetic", "lora"):
            raise ValueError(f"update must be 'synthetic' or 'lora', got {self.update!r}")
        if self.run.dp_mode not in ("none", "client"):
            raise ValueError("with secure aggregation only dp_mode 'none' or 'client' (distributed noise) apply")
        if self.update == "lora" and not self.run.data_dir:
            raise ValueError("update='lora' needs data_dir (a generated federation)")

    @property
    def k(self) -> int:
        return max(1, int(round(self.run.density * self.dim)))

    def dp(self) -> DPConfig:
        return DPConfig(mode=self.run.dp_mode, clip_norm=self.run.dp_clip_norm,
                        noise_multiplier=self.run.dp_noise_multiplier, clients_per_round=self.run.num_clients)

    def with_run(self, **changes: Any) -> SecAggRunConfig:
        """A copy with some run settings changed (``rounds=1``, ``density=0.1`` ...)."""
        from dataclasses import replace

        return replace(self, run=self.run.replace(**changes))


# --------------------------------------------------------------------------- shared pieces


def shared_support(seed: int, dim: int, k: int) -> np.ndarray:
    """The public support of a round: ``k`` distinct positions of ``[0, dim)`` drawn from ``seed``."""
    if not 0 < k <= dim:
        raise ValueError(f"need 0 < k <= dim (k={k}, dim={dim})")
    return np.sort(np.random.default_rng([int(seed), 0x5EC]).choice(dim, size=k, replace=False)).astype(np.int64)


def round_seed(base_seed: int, server_round: int) -> int:
    """The seed the server publishes for ``server_round`` (any public value works; this is reproducible)."""
    return int(np.random.default_rng([int(base_seed), int(server_round), 0xA66]).integers(2**31 - 1))


def synthetic_update(seed: int, partition: int, server_round: int, dim: int) -> np.ndarray:
    """Deterministic fake client update: a shared direction plus client-specific noise (float32)."""
    common = np.random.default_rng([seed, 1]).normal(0, 0.05, dim)
    own = np.random.default_rng([seed, 2, partition, server_round]).normal(0, 0.02, dim)
    return (common + own).astype(np.float32)


def secure_values(
    corrected: np.ndarray, support: np.ndarray, dp: DPConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Values a client feeds into SecAgg+ and its new residual.

    Clip the ``k`` values at the support (DP sensitivity), add the client's share of noise in
    ``client`` mode; the residual keeps everything that was not released: ``corrected`` minus the
    clipped values at the support (noise is not fed back into error feedback).
    """
    vals = corrected[support].astype(np.float32)
    if dp.mode != "none":
        clipped, _ = clip_dense({"v": vals}, dp.clip_norm)
        vals = clipped["v"]
    residual = corrected.copy()
    residual[support] -= vals
    if dp.mode == "client" and dp.noise_multiplier > 0:
        vals = vals + rng.normal(0, client_noise_std(dp), vals.shape).astype(np.float32)
    return vals.astype(np.float32), residual.astype(np.float32)


# --------------------------------------------------------------------------- recording


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


# --------------------------------------------------------------------------- client


def _lora_update(cfg: SecAggRunConfig, partition: int, server_round: int, global_flat: np.ndarray) -> np.ndarray:
    from fedcogen.client.lora import encode_examples, get_adapter, lora_model, set_adapter, train_local
    from fedcogen.simulations.data import client_examples, load_federation, user_ids

    lm = lora_model(cfg.run.model, cfg.run.seed)
    names = sorted(lm.params)
    shapes = lm.shapes()
    adapter, off = {}, 0
    for n in names:
        size = int(np.prod(shapes[n]))
        adapter[n] = global_flat[off : off + size].reshape(shapes[n])
        off += size
    set_adapter(lm, adapter)
    fed = load_federation(cfg.run.data_dir)
    uid = user_ids(fed)[partition % len(user_ids(fed))]
    data = encode_examples(lm.tokenizer, client_examples(fed, uid, "train"))
    train_local(lm, data, steps=cfg.run.local_steps, batch_size=cfg.run.batch_size, lr=cfg.run.lr,
                seed=cfg.run.seed * 1000 + server_round * 31 + partition)
    new = get_adapter(lm)
    return np.concatenate([(new[n] - adapter[n]).ravel() for n in names]).astype(np.float32)


def adapter_flat(model: str, seed: int = 0) -> np.ndarray:
    """The initial LoRA adapter of ``model`` as one flat float32 vector (sorted tensor names)."""
    from fedcogen.client.lora import lora_model

    lm = lora_model(model, seed)
    return np.concatenate([lm.initial[n].ravel() for n in sorted(lm.initial)]).astype(np.float32)


def make_client_app(cfg: SecAggRunConfig) -> Any:
    """Legacy ClientApp: a NumPyClient whose ``fit`` returns what the mode sends (secaggplus_mod wraps it)."""
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
            if cfg.update == "synthetic":
                update = synthetic_update(cfg.run.seed, self.partition, rnd, dim)
            else:
                update = _lora_update(cfg, self.partition, rnd, global_flat)
            dp = cfg.dp()
            rng = np.random.default_rng([cfg.run.seed, 7, self.partition, rnd])
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
            from fedcogen.protocols.sparse_codec import CodecConfig, compress

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


# --------------------------------------------------------------------------- server


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
                from fedcogen.protocols.sparse_codec import decode_sparse, densify

                total = np.zeros(dim, np.float64)
                for _, res in results:
                    blob = parameters_to_ndarrays(res.parameters)[0].tobytes()
                    total += densify(decode_sparse(blob))["flat"].reshape(-1)
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
        recorder.final = legacy.strategy.global_flat.copy()  # type: ignore[attr-defined]

    return app


def run_secagg(cfg: SecAggRunConfig, recorder: Recorder | None = None) -> dict[str, Any]:
    """Run one simulation; returns bytes, timings and the final global vector (plus the recorder)."""
    from flwr.simulation import run_simulation

    recorder = recorder or Recorder()
    initial = adapter_flat(cfg.run.model, cfg.run.seed) if cfg.update == "lora" else np.zeros(cfg.dim, np.float32)
    if cfg.update == "lora":
        cfg.dim = int(initial.size)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    started = time.perf_counter()
    # Still flwr's deprecated in-process run_simulation (unlike `fedcogen simulate`, which drives
    # `flwr run`): the apps here are closures over this process's Recorder (every masked vector and
    # aggregate the tests inspect), which cannot cross into the processes `flwr run` starts.
    run_simulation(
        server_app=make_server_app(cfg, recorder, initial),
        client_app=make_client_app(cfg),
        num_supernodes=cfg.run.num_clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": cfg.num_cpus, "num_gpus": 0, "include_dashboard": False},
        },
    )
    wall = time.perf_counter() - started
    final = getattr(recorder, "final", None)
    if final is None or len(recorder.aggregates) != cfg.run.rounds:
        raise RuntimeError(
            f"secure aggregation run ({cfg.mode}) did not complete: {len(recorder.aggregates)} of "
            f"{cfg.run.rounds} rounds aggregated (see the Flower log above)"
        )
    out = {
        "config": asdict(cfg),
        "k": cfg.k if cfg.mode != "dense" else cfg.dim,
        "wall_seconds": wall,
        **recorder.summary(),
    }
    rounds = max(1, cfg.run.rounds)
    out["bytes_up_per_client_round"] = out["total_bytes_up"] / (rounds * cfg.run.num_clients)
    out["bytes_down_per_client_round"] = out["total_bytes_down"] / (rounds * cfg.run.num_clients)
    out["mean_round_seconds"] = float(np.mean(recorder.round_seconds)) if recorder.round_seconds else math.nan
    # Round 1 includes starting the Ray actors and loading models: report later rounds separately.
    steady = recorder.round_seconds[1:] or recorder.round_seconds
    out["steady_round_seconds"] = float(np.mean(steady)) if steady else math.nan
    return out


def compare_modes(base: SecAggRunConfig, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Run sparse SecAgg+, dense SecAgg+ and the plain sparse baseline with the same settings."""
    from dataclasses import replace

    rows = {}
    for mode in MODES:
        res = run_secagg(replace(base, mode=mode))
        rows[mode] = {k: v for k, v in res.items() if k != "config"}
    result = {"config": asdict(base), "modes": rows}
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "secagg_compare.json").write_text(json.dumps(result, indent=2, default=float))
        (out / "secagg_compare.md").write_text(compare_markdown(result))
    return result


def compare_markdown(result: dict[str, Any]) -> str:
    """A table of bytes and time per mode."""
    cfg = result["config"]
    lines = [
        "# Sparse SecAgg+ vs dense SecAgg+ vs plain sparse",
        "",
        f"{cfg['run']['num_clients']} clients, {cfg['run']['rounds']} rounds, dim {cfg['dim']}, "
        f"density {cfg['run']['density']}, "
        f"update {cfg['update']}.",
        "",
        "| mode | values sent | up bytes / client / round | down bytes / client / round | round s (after 1st) "
        "| wall s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for mode, r in result["modes"].items():
        lines.append(
            f"| {mode} | {r['k']} | {r['bytes_up_per_client_round']:.0f} | {r['bytes_down_per_client_round']:.0f} "
            f"| {r['steady_round_seconds']:.2f} | {r['wall_seconds']:.1f} |"
        )
    lines.append("")
    lines.append("Bytes are Flower-serde serialized message sizes of all SecAgg+ stages (setup, share keys, "
                 "masked vectors, unmask) as seen by the server's grid; down-link includes the dense broadcast.")
    return "\n".join(lines) + "\n"
