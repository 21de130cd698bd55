"""How many simulated devices fit on one machine: peak memory, seconds and bytes per round vs clients.

``fedcogen bench scale`` runs the real federation (``flwr run`` on the Flower simulation engine by
default, or the in-process loopback engine) for each model and each number of clients, with the
same cross-device settings everywhere: ``clients_per_round`` sampled clients train one local step,
a fixed cohort of ``eval_clients`` clients evaluates, every client is known to the server (the
handshake reaches all of them). Only the number of clients changes down a column, so what grows
with it is what the table shows:

* peak RSS summed over every process of the run, and of the largest single process
  (:class:`fedcogen.simulations.federation.proc_memory.MemorySampler`);
* seconds per round (training, broadcast, evaluation and checkpoint of rounds >= 1, from the run's
  own ``round_seconds``) and the start-up (handshake with every node + round-0 evaluation);
* bytes per round: every message both ways, from the run's ledger (serialised Flower messages).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedcogen import results_json
from fedcogen.provenance import provenance
from fedcogen.run_config import FLSettings
from fedcogen.simulations.federation.federation import SimulationConfig, run_federation
from fedcogen.simulations.federation.proc_memory import MemorySampler, loadavg

log = logging.getLogger(__name__)


@dataclass
class ScaleBenchConfig:
    """Which runs: every model x every number of clients, with cheap cross-device rounds."""

    models: list[str] = field(default_factory=lambda: ["tiny", "smollm2-27l"])
    clients: list[int] = field(default_factory=lambda: [10, 100, 1000])
    clients_per_round: int = 10
    eval_clients: int = 10
    rounds: int = 2
    local_steps: int = 1
    batch_size: int = 2
    max_seq_len: int = 96
    engine: str = "flower"
    num_cpus_per_client: float = 0.5
    seed: int = 0
    out_dir: str = "runs/bench-scale"

    def __post_init__(self) -> None:
        if not self.models or not self.clients:
            raise ValueError("bench scale needs at least one model and one number of clients")
        if min(self.clients) < 1 or self.clients_per_round < 1 or self.rounds < 1:
            raise ValueError("clients, clients_per_round and rounds must be >= 1")

    def settings(self, model: str, n: int) -> FLSettings:
        return FLSettings(
            model=model, num_clients=n, clients_per_round=min(n, self.clients_per_round), rounds=self.rounds,
            local_steps=self.local_steps, batch_size=self.batch_size, max_seq_len=self.max_seq_len,
            eval_clients=min(n, self.eval_clients), seed=self.seed, lr=5e-3, density=0.05,
            out_dir=str(Path(self.out_dir) / f"{model}-{n}"), data_dir=str(Path(self.out_dir) / f"data-{n}"),
            round_timeout=1800.0, overwrite=True,  # the benchmark owns its run folders
        )


def run_one(cfg: ScaleBenchConfig, model: str, n: int) -> dict[str, Any]:
    """One federation under the memory sampler; the row of the table."""
    sim = SimulationConfig(run=cfg.settings(model, n), engine=cfg.engine,
                           num_cpus_per_client=cfg.num_cpus_per_client)
    home = Path(sim.run.out_dir).resolve() / "flwr-home"
    started = time.perf_counter()
    with MemorySampler(env_marker=f"FLWR_HOME={home}" if cfg.engine == "flower" else "") as mem:
        result = run_federation(sim)
    wall = time.perf_counter() - started
    rounds = [m for m in result["rounds"] if m["round"] >= 1]
    per_round_s = [m["round_seconds"] for m in rounds if "round_seconds" in m]
    per_round_b = [m["bytes_up"] + m["bytes_down"] for m in rounds]
    r0 = next((m for m in result["rounds"] if m["round"] == 0), {})
    return {
        "model": model,
        "clients": n,
        "clients_per_round": sim.run.clients_per_round,
        "eval_clients": sim.run.eval_clients,
        **mem.to_dict(),
        "wall_seconds": round(wall, 1),
        "seconds_per_round": round(sum(per_round_s) / len(per_round_s), 2) if per_round_s else None,
        "startup_seconds": round(wall - sum(per_round_s), 1),
        "bytes_per_round": int(sum(per_round_b) / len(per_round_b)) if per_round_b else 0,
        "bytes_round0": int(r0.get("bytes_up", 0) + r0.get("bytes_down", 0)),
        "bytes_total": int(result["bytes"]["all"]),
        "final_eval_loss": result["final_eval_loss"],
        "completed_rounds": result["completed_rounds"],
    }


def run_bench(cfg: ScaleBenchConfig) -> dict[str, Any]:
    """Every (model, clients) run, one after another, then JSON + markdown in ``out_dir``."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in cfg.models:
        for n in cfg.clients:
            log.info("bench scale: %s with %d clients (%d per round)", model, n, min(n, cfg.clients_per_round))
            rows.append(run_one(cfg, model, n))
            _write(out, cfg, rows)  # partial results survive an interrupted sweep
    return _write(out, cfg, rows)


def _write(out: Path, cfg: ScaleBenchConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    result = {"config": asdict(cfg), "runs": rows, "load_average": loadavg(),
              "provenance": provenance(settings=asdict(cfg), seeds={"seed": cfg.seed})}
    results_json.write(out / "bench_scale.json", result)
    (out / "bench_scale.md").write_text(markdown(result))
    return result


def markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = [
        "# Scale: simulated clients on one machine",
        "",
        f"Engine `{cfg['engine']}`; per round {cfg['clients_per_round']} sampled clients x {cfg['local_steps']} "
        f"local step(s) (batch {cfg['batch_size']}, {cfg['max_seq_len']} tokens), evaluation cohort "
        f"{cfg['eval_clients']} clients; {cfg['rounds']} rounds. Load average at the end: {result['load_average']}.",
        "",
        "| model | clients | peak RSS all processes (MiB) | peak RSS largest process (MiB) | processes | "
        "s / round | start-up s (handshake + round-0 eval) | bytes / round | bytes round 0 | final eval loss |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['model']} | {r['clients']} | {r['peak_total_rss_mib']:.0f} | {r['peak_process_rss_mib']:.0f} | "
            f"{r['processes']} | {r['seconds_per_round']} | {r['startup_seconds']} | {r['bytes_per_round']:,} | "
            f"{r['bytes_round0']:,} | {r['final_eval_loss']:.4f} |"
        )
    return "\n".join(lines) + "\n"
