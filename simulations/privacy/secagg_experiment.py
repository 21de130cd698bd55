"""Sparse SecAgg+ vs dense SecAgg+ vs plain sparse, run in Flower's simulation engine.

Client updates are either synthetic (deterministic pseudo-random vectors: protocol tests and
byte/time benchmarks) or real LoRA training on each user's data. Every message crossing the
server's grid is serialized with Flower's serde to count bytes (:class:`Recorder`).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedcogen import results_json
from fedcogen.client.fl.lora_training import encode_examples, train_local
from fedcogen.dataset import client_examples, load_federation, user_ids
from fedcogen.lora_adapter import get_adapter, lora_model, set_adapter
from fedcogen.provenance import provenance
from fedcogen.secagg import MODES, SecAggRunConfig
from fedcogen.simulations.privacy.secagg_client import make_client_app
from fedcogen.simulations.privacy.secagg_server import Recorder, make_server_app


def synthetic_update(seed: int, partition: int, server_round: int, dim: int) -> np.ndarray:
    """Deterministic fake client update: a shared direction plus client-specific noise (float32)."""
    common = np.random.default_rng([seed, 1]).normal(0, 0.05, dim)
    own = np.random.default_rng([seed, 2, partition, server_round]).normal(0, 0.02, dim)
    return (common + own).astype(np.float32)


def lora_update(cfg: SecAggRunConfig, partition: int, server_round: int, global_flat: np.ndarray) -> np.ndarray:
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
    lm = lora_model(model, seed)
    return np.concatenate([lm.initial[n].ravel() for n in sorted(lm.initial)]).astype(np.float32)


def run_secagg(cfg: SecAggRunConfig, recorder: Recorder | None = None) -> dict[str, Any]:
    """Run one simulation; returns bytes, timings and the final global vector (plus the recorder)."""
    from flwr.simulation import run_simulation

    recorder = recorder or Recorder()

    def update_fn(partition: int, server_round: int, global_flat: np.ndarray) -> np.ndarray:
        if cfg.update == "synthetic":
            return synthetic_update(cfg.run.seed, partition, server_round, global_flat.size)
        return lora_update(cfg, partition, server_round, global_flat)

    initial = adapter_flat(cfg.run.model, cfg.run.seed) if cfg.update == "lora" else np.zeros(cfg.dim, np.float32)
    if cfg.update == "lora":
        cfg.dim = int(initial.size)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    started = time.perf_counter()
    run_simulation(
        server_app=make_server_app(cfg, recorder, initial),
        client_app=make_client_app(cfg, update_fn),
        num_supernodes=cfg.run.num_clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": cfg.num_cpus, "num_gpus": 0, "include_dashboard": False},
        },
    )
    wall = time.perf_counter() - started
    final = recorder.final
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
    rows = {}
    for mode in MODES:
        res = run_secagg(replace(base, mode=mode))
        rows[mode] = {k: v for k, v in res.items() if k != "config"}
    result = {"config": asdict(base), "modes": rows,
              "provenance": provenance(settings=asdict(base), seeds={"seed": base.run.seed})}
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        results_json.write(out / "secagg_compare.json", result, indent=2, default=float)
        (out / "secagg_compare.md").write_text(compare_markdown(result))
    return result


def compare_markdown(result: dict[str, Any]) -> str:
    """A table of bytes and time per mode."""
    cfg = result["config"]
    lines = [
        "# Sparse SecAgg+ vs dense SecAgg+ vs plain sparse",
        "",
        f"{cfg['run']['num_clients']} clients, {cfg['run']['rounds']} rounds, dim {cfg['dim']}, density {cfg['run']['density']}, "
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
