"""DP with clients to hide in: a cross-device federation without DP and at a few noise levels, same data.

Why this experiment: the noise central DP adds to the mean is ``sigma * C / n`` per coordinate, and
the sampling rate ``q = n / N`` amplifies privacy, so both the epsilon and the utility cost of DP
improve with many clients per round drawn from many more clients. With 4 clients (the earlier
privacy run) sigma = 1 cost +284 % eval loss; here ``N`` (say 1,000) simulated clients, ``n`` (50)
per round, each sampled client does cheap local work (1 step), and the report gives:

* epsilon at ``delta = 1 / N^1.1`` from each DP run's own RDP accountant (Poisson-subsampled
  Gaussian; the sample is secret, see :mod:`fedcogen.server.fl.client_sampling`);
* a small frontier, one DP run per noise multiplier: the share of the no-DP run's gain in
  evaluation loss (round 0 -> last round, same fixed evaluation cohort) that each DP run keeps, and
  whether the no-DP run gained enough (``MIN_NO_DP_GAIN``) for that share to mean anything;
* canary exposure (secret sharer) and membership-inference AUC on each run's final adapter, for the
  canaries and tasks of clients that actually trained (the others were never in any update);
* seconds per round and bytes of every message.

Every run uses the loopback engine (the real apps in one process, every message through Flower's
serde) by default: on a 2-core machine Ray's actors add start-up and scheduling time, not signal.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedcogen import dataset as d
from fedcogen import results_json
from fedcogen.protocols.privacy import dp
from fedcogen.provenance import RUN_LOCATION_KEYS, check_reusable, provenance, recorded
from fedcogen.run_config import FLSettings
from fedcogen.server.fl.checkpoint import has_checkpoint, load_checkpoint
from fedcogen.simulations.federation.federation import SimulationConfig, load_run_adapter, run_federation
from fedcogen.simulations.federation.proc_memory import loadavg
from fedcogen.simulations.privacy.attack_metrics import canary_exposure, membership_inference
from fedcogen.simulations.privacy.attack_runs import mia_pairs

log = logging.getLogger(__name__)

MIN_NO_DP_GAIN = 0.30  # the no-DP run must lower eval loss by this much for "share of the gain" to mean much
TARGET_EPSILON = 4.0
TARGET_GAIN_KEPT = 0.70

DP_SCALE_RUN = FLSettings(
    model="smollm2-27l", num_clients=1000, clients_per_round=50, rounds=10, local_steps=1, batch_size=4,
    max_seq_len=128, lr=5e-3, lora_r=8, lora_alpha=16, lora_dropout=0.0, density=0.05, quant="int8",
    eval_clients=32, dp_mode="server", dp_clip_norm=0.5, history_examples=True,
)


@dataclass
class DPScaleConfig:
    """The runs (``sigma = 0`` and each of ``noise_multipliers``) and the attacks on them."""

    run: FLSettings = field(default_factory=lambda: DP_SCALE_RUN)
    noise_multipliers: tuple[float, ...] = (1.0,)
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
        self.noise_multipliers = tuple(float(x) for x in self.noise_multipliers)
        if not self.noise_multipliers or not all(x > 0 for x in self.noise_multipliers):
            raise ValueError(f"noise_multipliers must be > 0 (the no-DP run is always included), "
                             f"got {list(self.noise_multipliers)}")

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


def trained_clients(run_dir: Path) -> list[str]:
    """Clients whose update entered at least one round, from the server's checkpoint.

    Under DP the released metrics do not name the (secret) sample; the experiment plays the trusted
    server here, which knows whom it sampled (its checkpoint counts each client's accepted updates).
    """
    return sorted(c for c, n in load_checkpoint(run_dir)[1]["participations"].items() if int(n) > 0)


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
    for sigma in (0.0, *cfg.noise_multipliers):
        run_dir = out / ("no_dp" if sigma == 0 else f"dp_sigma_{sigma:g}")
        log.info("dp scale: sigma %g, %d clients (%d per round), %d rounds -> %s", sigma, cfg.run.num_clients,
                 cfg.run.clients_per_round, cfg.run.rounds, run_dir)
        t0 = time.perf_counter()
        settings = _settings(cfg, sigma, data_dir, run_dir)
        if cfg.reuse_runs and _finished(run_dir, cfg.run.rounds):
            check_reusable(recorded(run_dir / "metrics.json"),
                           provenance(settings=settings.to_config(), seeds={"seed": settings.seed}),
                           ignore=RUN_LOCATION_KEYS, what=f"the finished run in {run_dir}",
                           hint="delete that folder or use another --out-dir to run it again")
            settings = settings.replace(resume=True)  # same code and settings: zero rounds left to run
        metrics = run_federation(SimulationConfig(run=settings, engine=cfg.engine))
        seconds = time.perf_counter() - t0
        if not cfg.keep_client_state:
            shutil.rmtree(run_dir / "clients", ignore_errors=True)
        users = trained_clients(run_dir)
        t1 = time.perf_counter()
        attacks = attack(run_dir, fed, users, cfg)
        rounds = [m for m in metrics["rounds"] if m["round"] >= 1]
        runs.append({
            "noise_multiplier": sigma,
            "epsilon": (metrics.get("dp") or {}).get("epsilon") if sigma > 0 else None,
            "amplification": (metrics.get("dp") or {}).get("amplification") if sigma > 0 else None,
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


def gain(run: dict[str, Any]) -> float | None:
    """What training gained: round-0 eval loss minus final eval loss (``None`` if either is missing)."""
    a, b = run.get("initial_eval_loss"), run.get("final_eval_loss")
    ok = isinstance(a, int | float) and isinstance(b, int | float) and math.isfinite(a) and math.isfinite(b)
    return a - b if ok else None


def frontier(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per noise level: epsilon, the share of the no-DP gain kept, and whether it meets the target."""
    base = runs[0]
    g0 = gain(base)
    rel0 = g0 / base["initial_eval_loss"] if g0 is not None and base["initial_eval_loss"] else None
    points = []
    for run in runs[1:]:
        g = gain(run)
        kept = g / g0 if g is not None and g0 else None
        eps = run["epsilon"]
        points.append({
            "noise_multiplier": run["noise_multiplier"], "epsilon": eps, "gain_kept": kept,
            "relative_eval_loss_cost": (run["final_eval_loss"] / base["final_eval_loss"] - 1.0
                                        if base["final_eval_loss"] and math.isfinite(run["final_eval_loss"]) else None),
            "meets_target": eps is not None and kept is not None and eps <= TARGET_EPSILON
                            and kept >= TARGET_GAIN_KEPT,
        })
    met = [p for p in points if p["meets_target"]]
    return {
        "no_dp_relative_gain": rel0,
        "no_dp_gain_enough": rel0 is not None and rel0 >= MIN_NO_DP_GAIN,
        "target": {"epsilon_at_most": TARGET_EPSILON, "gain_kept_at_least": TARGET_GAIN_KEPT,
                   "no_dp_gain_at_least": MIN_NO_DP_GAIN},
        "points": points,
        "target_met": bool(met) and rel0 is not None and rel0 >= MIN_NO_DP_GAIN,
    }


def _write(out: Path, cfg: DPScaleConfig, runs: list[dict[str, Any]], started: float) -> dict[str, Any]:
    front = frontier(runs)
    best = min((p for p in front["points"] if p["epsilon"] is not None), key=lambda p: p["epsilon"], default=None)
    result = {
        "config": {**{k: v for k, v in asdict(cfg).items() if k != "run"}, "run": cfg.run.to_config()},
        "seeds": {"run_seed": cfg.run.seed, "dp_noise_and_sample": "OS CSPRNG (not reproducible by design)"},
        "delta": cfg.delta,
        "sample_rate": cfg.sample_rate,
        "frontier": front,
        "epsilon": best["epsilon"] if best else None,  # the smallest epsilon measured (most noise)
        "runs": runs,
        "seconds": round(time.perf_counter() - started, 1),
        "load_average": loadavg(),
        "provenance": provenance(settings=asdict(cfg), seeds={"seed": cfg.run.seed}),
    }
    results_json.write(out / "dp_scale.json", result, default=str)
    (out / "dp_scale.md").write_text(markdown(result))
    return result


def _f(x: Any, fmt: str = ".4f") -> str:
    return format(x, fmt) if isinstance(x, int | float) and math.isfinite(x) else "-"


def _pct(x: Any, fmt: str = ".1f") -> str:
    return format(100 * x, fmt) if isinstance(x, int | float) and math.isfinite(x) else "-"


def markdown(result: dict[str, Any]) -> str:
    c, r, f = result["config"], result["config"]["run"], result["frontier"]
    t = f["target"]
    verdict = "met" if f["target_met"] else "not met"
    lines = [
        "# DP with clients to hide in",
        "",
        f"`{r['model']}` (`lora_mode` {r.get('lora_mode', 'lora')}, r {r['lora_r']}, targets {r['lora_targets']}), "
        f"{r['num_clients']} simulated clients, {r['clients_per_round']} per round "
        f"(q = {result['sample_rate']:.3g}), {r['rounds']} rounds of {r['local_steps']} local step(s) "
        f"(batch {r['batch_size']}, {r['max_seq_len']} tokens, lr {r['lr']}), density {r['density']} {r['quant']}, "
        f"server {r['server_opt']} (lr {r['server_lr']}), server-side DP clip C = {r['dp_clip_norm']}, uniform "
        f"weights; evaluation cohort {r['eval_clients']} clients; engine `{c['engine']}`. delta = 1/N^1.1 = "
        f"{result['delta']:.3g}. DP noise and the DP sample: OS CSPRNG (secret). Load average at the end: "
        f"{result['load_average']}.",
        "",
        f"Command: `{result['provenance']['command']}` at commit {result['provenance']['code']['commit'][:12]}"
        f"{' (with uncommitted changes)' if result['provenance']['code']['dirty'] else ''}, "
        f"{result['seconds']:.0f} s.",
        "",
        f"No-DP run lowered eval loss by {_pct(f['no_dp_relative_gain'])} % (needed: >= {_pct(t['no_dp_gain_at_least'], '.0f')} %). "
        f"Target epsilon <= {t['epsilon_at_most']:g} keeping >= {_pct(t['gain_kept_at_least'], '.0f')} % of the "
        f"no-DP gain: **{verdict}**.",
        "",
        "| noise multiplier | epsilon | share of no-DP gain kept | final eval loss vs no DP | meets target |",
        "|---:|---:|---:|---:|---|",
    ]
    for p in f["points"]:
        lines.append(f"| {p['noise_multiplier']:g} | {_f(p['epsilon'], '.2f')} | {_pct(p['gain_kept'])} % | "
                     f"{_pct(p['relative_eval_loss_cost'], '+.1f')} % | {'yes' if p['meets_target'] else 'no'} |")
    lines += [
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
