"""DP with clients to hide in: a cross-device federation with and without DP, same data, same attacks.

Why this experiment: the noise central DP adds to the mean is ``sigma * C / n`` per coordinate, and
the sampling rate ``q = n / N`` amplifies privacy, so both the epsilon and the utility cost of DP
improve with many clients per round drawn from many more clients. With 4 clients (the earlier
privacy run) sigma = 1 cost +284 % eval loss; here ``N`` (say 1,000) simulated clients, ``n`` (50)
per round, each sampled client does cheap local work (1 step), and the report gives:

* epsilon at ``delta = 1 / N^1.1`` from the run's own RDP accountant (Poisson-subsampled Gaussian);
* the evaluation loss of the DP run vs the no-DP run on the same fixed evaluation cohort
  (relative cost) and vs round 0 (what training gained);
* canary exposure (secret sharer) and membership-inference AUC on each run's final adapter, for the
  canaries and tasks of clients that actually trained (the others were never in any update);
* seconds per round and bytes of every message.

Both runs use the loopback engine (the real apps in one process, every message through Flower's
serde) by default: on a 2-core machine Ray's actors add start-up and scheduling time, not signal.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedcogen import dataset as d
from fedcogen.protocols import dp
from fedcogen.run_config import FLSettings
from fedcogen.server.checkpoint import has_checkpoint, load_checkpoint
from fedcogen.simulations.attacks import canary_exposure, membership_inference
from fedcogen.simulations.federation import SimulationConfig, load_run_adapter, run_federation
from fedcogen.simulations.privacy_attacks import mia_pairs
from fedcogen.simulations.proc_memory import loadavg

log = logging.getLogger(__name__)

DP_SCALE_RUN = FLSettings(
    model="smollm2-27l", num_clients=1000, clients_per_round=50, rounds=10, local_steps=1, batch_size=4,
    max_seq_len=128, lr=5e-3, lora_r=8, lora_alpha=16, lora_dropout=0.0, density=0.05, quant="int8",
    eval_clients=32, dp_mode="server", dp_clip_norm=0.5, history_examples=True,
)


@dataclass
class DPScaleConfig:
    """The two runs (``sigma = 0`` and ``noise_multiplier``) and the attacks on them."""

    run: FLSettings = field(default_factory=lambda: DP_SCALE_RUN)
    noise_multiplier: float = 1.0
    canaries_per_user: int = 1
    canary_repeats: int = 2
    attack_canaries: int = 16  # canaries of clients that trained, scored per run
    n_alternatives: int = 31
    mia_max_examples: int = 48
    engine: str = "loopback"
    keep_client_state: bool = False  # per-client residuals/copies on disk (GBs at 1,000 clients)
    reuse_runs: bool = True  # a run folder whose checkpoint has every round is read back, not retrained
    out_dir: str = "runs/dp-scale"

    def __post_init__(self) -> None:
        if self.run.dp_mode != "server":
            raise ValueError("the scale DP experiment reports the central epsilon: dp_mode must be 'server'")
        if not self.noise_multiplier > 0:
            raise ValueError("noise_multiplier must be > 0 (the no-DP run is always included)")

    @property
    def delta(self) -> float:
        return 1.0 / self.run.num_clients ** 1.1

    @property
    def sample_rate(self) -> float:
        return self.run.clients_per_round / self.run.num_clients


def _settings(cfg: DPScaleConfig, sigma: float, data_dir: Path, out: Path) -> FLSettings:
    # evaluation at round 0 and after the last round: the figure is the final loss, and every
    # evaluation costs the cohort a forward pass over its validation split
    return cfg.run.replace(data_dir=str(data_dir), out_dir=str(out), dp_delta=cfg.delta, eval_every=cfg.run.rounds,
                           dp_mode="server" if sigma > 0 else "none", dp_noise_multiplier=sigma,
                           overwrite=True)  # an unfinished run folder of this benchmark is redone


def _finished(run_dir: Path, rounds: int) -> bool:
    return has_checkpoint(run_dir) and int(load_checkpoint(run_dir)[1]["round"]) >= rounds


def trained_clients(metrics: dict[str, Any]) -> list[str]:
    """Clients whose update entered at least one round (sampled, not failed)."""
    seen: set[str] = set()
    for m in metrics.get("rounds", []):
        seen.update(c for c in m.get("sampled", []) if c not in m.get("failures", {}))
    return sorted(seen)


def attack(run_dir: Path, fed: Any, users: list[str], cfg: DPScaleConfig) -> dict[str, Any]:
    """Canary exposure + MIA on a run's final adapter, restricted to clients that trained."""
    lm, _ = load_run_adapter(run_dir)
    rng = np.random.default_rng(cfg.run.seed)
    owners = set(users)
    records = [r for r in d.canary_records(fed) if r["owner"] in owners]
    if len(records) > cfg.attack_canaries:
        records = [records[i] for i in sorted(rng.choice(len(records), cfg.attack_canaries, replace=False))]
    exposure = canary_exposure(lm.model, lm.tokenizer, records, cfg.n_alternatives, cfg.run.seed,
                               alternatives_fn=d.random_canary_like, progress=False)
    members, non = mia_pairs(fed, cfg.mia_max_examples, cfg.run.seed, users=users)
    mia = membership_inference(lm.model, lm.tokenizer, members, non)
    return {"canary_exposure": {k: exposure[k] for k in ("mean", "max", "chance")}, "canaries": len(records),
            "mia": mia}


def run_dp_scale(cfg: DPScaleConfig) -> dict[str, Any]:
    """No-DP run, DP run, attacks on both; ``dp_scale.json`` + ``dp_scale.md`` in ``out_dir``."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    fed = d.generate_federation(d.FederationConfig(n_users=cfg.run.num_clients, seed=cfg.run.seed,
                                                   canaries_per_user=cfg.canaries_per_user,
                                                   canary_repeats=cfg.canary_repeats))
    data_dir = out / "data"
    if not data_dir.exists():
        d.write_federation(fed, data_dir)
    fed = d.load_federation(data_dir)
    runs = []
    for sigma in (0.0, cfg.noise_multiplier):
        run_dir = out / ("no_dp" if sigma == 0 else f"dp_sigma_{sigma:g}")
        log.info("dp scale: sigma %g, %d clients (%d per round), %d rounds -> %s", sigma, cfg.run.num_clients,
                 cfg.run.clients_per_round, cfg.run.rounds, run_dir)
        t0 = time.perf_counter()
        settings = _settings(cfg, sigma, data_dir, run_dir)
        if cfg.reuse_runs and _finished(run_dir, cfg.run.rounds):
            settings = settings.replace(resume=True)  # same settings (fingerprinted): zero rounds left to run
        metrics = run_federation(SimulationConfig(run=settings, engine=cfg.engine))
        seconds = time.perf_counter() - t0
        if not cfg.keep_client_state:
            shutil.rmtree(run_dir / "clients", ignore_errors=True)
        users = trained_clients(metrics)
        t1 = time.perf_counter()
        attacks = attack(run_dir, fed, users, cfg)
        rounds = [m for m in metrics["rounds"] if m["round"] >= 1]
        runs.append({
            "noise_multiplier": sigma,
            "epsilon": (metrics.get("dp") or {}).get("epsilon") if sigma > 0 else None,
            "planned_epsilon": dp.epsilon_for(sigma, cfg.sample_rate, metrics["completed_rounds"], cfg.delta)
            if sigma > 0 else None,
            "completed_rounds": metrics["completed_rounds"],
            "initial_eval_loss": metrics["rounds"][0].get("eval_loss"),
            "final_eval_loss": metrics["final_eval_loss"],
            "eval_loss_by_round": [m.get("eval_loss") for m in metrics["rounds"]],
            "train_loss_by_round": [m.get("train_loss") for m in rounds],
            "update_norm_by_round": [m.get("update_norm") for m in rounds],
            "rejected": metrics.get("rejected_total"),
            "trained_clients": len(users),
            "seconds": round(seconds, 1),
            "seconds_per_round": round(float(np.mean([m["round_seconds"] for m in rounds])), 1) if rounds else None,
            "bytes": metrics["bytes"],
            "attack_seconds": round(time.perf_counter() - t1, 1),
            **attacks,
            "run_dir": str(run_dir),
        })
        _write(out, cfg, runs, started)
    return _write(out, cfg, runs, started)


def _write(out: Path, cfg: DPScaleConfig, runs: list[dict[str, Any]], started: float) -> dict[str, Any]:
    base = runs[0]
    with_dp = runs[1] if len(runs) > 1 else None
    rel = None
    if with_dp and base["final_eval_loss"] and math.isfinite(with_dp["final_eval_loss"]):
        rel = with_dp["final_eval_loss"] / base["final_eval_loss"] - 1.0
    result = {
        "config": {**{k: v for k, v in asdict(cfg).items() if k != "run"}, "run": cfg.run.to_config()},
        "delta": cfg.delta,
        "sample_rate": cfg.sample_rate,
        "epsilon": with_dp["epsilon"] if with_dp else None,
        "relative_eval_loss_cost": rel,
        "runs": runs,
        "seconds": round(time.perf_counter() - started, 1),
        "load_average": loadavg(),
    }
    (out / "dp_scale.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "dp_scale.md").write_text(markdown(result))
    return result


def _f(x: Any, fmt: str = ".4f") -> str:
    return format(x, fmt) if isinstance(x, int | float) and math.isfinite(x) else "-"


def markdown(result: dict[str, Any]) -> str:
    c, r = result["config"], result["config"]["run"]
    lines = [
        "# DP with clients to hide in",
        "",
        f"`{r['model']}`, {r['num_clients']} simulated clients, {r['clients_per_round']} per round "
        f"(q = {result['sample_rate']:.3g}), {r['rounds']} rounds of {r['local_steps']} local step(s) "
        f"(batch {r['batch_size']}, {r['max_seq_len']} tokens, lr {r['lr']}), density {r['density']} {r['quant']}, "
        f"server-side DP clip C = {r['dp_clip_norm']}, uniform weights; evaluation cohort {r['eval_clients']} "
        f"clients; engine `{c['engine']}`. delta = 1/N^1.1 = {result['delta']:.3g}. "
        f"Load average at the end: {result['load_average']}.",
        "",
        f"**epsilon {_f(result['epsilon'], '.2f')} at delta {result['delta']:.3g}; relative eval-loss cost of DP "
        f"{_f(100 * result['relative_eval_loss_cost'] if result['relative_eval_loss_cost'] is not None else None, '+.2f')} %**",
        "",
        "| run | epsilon | eval loss round 0 | final eval loss | canary exposure mean / max (chance) | "
        "MIA AUC | MIA TPR @1% FPR | clients trained | s / round | bytes (all messages) |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for run in result["runs"]:
        ce, mia = run["canary_exposure"], run["mia"]
        lines.append(
            f"| sigma {run['noise_multiplier']:g} | {_f(run['epsilon'], '.2f')} | {_f(run['initial_eval_loss'])} | "
            f"{_f(run['final_eval_loss'])} | {_f(ce['mean'], '.2f')} / {_f(ce['max'], '.2f')} ({_f(ce['chance'], '.2f')}, "
            f"{run['canaries']} canaries) | {_f(mia['auc'], '.3f')} | {_f(mia.get('tpr_at_1pct_fpr'), '.3f')} | "
            f"{run['trained_clients']} | {run['seconds_per_round']} | {run['bytes']['all']:,} |"
        )
    return "\n".join(lines) + "\n"
