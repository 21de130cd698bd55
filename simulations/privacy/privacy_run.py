"""End-to-end privacy evaluation: federations with and without DP, every attack, one report.

What ``fedcogen privacy run`` does, and why each step is there:

1. Generate the synthetic federation once (profiles, private history with canaries planted only in
   their owner's history, tasks).
2. Run the real federated sparse-LoRA training (:func:`fedcogen.simulations.federation.federation.run_federation`)
   for every noise multiplier of the sweep (0 = no DP, the baseline an attacker should beat). The
   no-DP run uses the in-process loopback engine with a tap on its grid so that every serialized
   Flower message a device sent is kept for the wire audit.
3. On each run's final global adapter: canary exposure (secret sharer), membership inference
   (loss and reference-calibrated, members = clients' training tasks, non-members = their held-out
   test tasks), utility = final validation loss reported by the federation, epsilon from its RDP
   accountant. Also a *single-client-update* MIA: the server's view of one client's clipped (and in
   client mode noised) update applied to the global adapter.
4. CoGenesis over real gRPC on loopback with the trained device adapter, for every variant
   (sketch, logit, gated and the privacy-violating ``cloud_with_context`` baseline): the
   context-leakage attacker on what the cloud received, and the wire audit of all captured bytes
   (CoGenesis + Flower) against every private value and canary.
5. JSON + markdown report with privacy-utility plots (epsilon vs eval loss, exposure vs epsilon).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedcogen import dataset as d
from fedcogen import results_json
from fedcogen.config_file import read_config_file
from fedcogen.protocols.privacy import dp
from fedcogen.provenance import provenance
from fedcogen.run_config import FLSettings
from fedcogen.simulations.evaluation.plots import privacy_plots
from fedcogen.simulations.evaluation.report import privacy_report
from fedcogen.simulations.federation.federation import SimulationConfig, run_federation
from fedcogen.simulations.privacy.attack_runs import (
    FlowerTap,
    attack_run,
    cogen_captures,
    leakage_and_audit,
    single_update_mia,
)
from fedcogen.simulations.privacy.span_audit import audit_run_dir
from fedcogen.variants import VARIANTS

log = logging.getLogger(__name__)


# The privacy evaluation's federated run: a mid-size device model, every user every round, history
# texts trained on (the canaries live there), server-side DP for the runs with noise.
PRIVACY_RUN = FLSettings(
    model="smollm2-24l", num_clients=8, clients_per_round=8, rounds=4, local_steps=8, batch_size=4, lr=2e-3,
    lora_r=8, lora_alpha=16, lora_dropout=0.0, lora_targets="q_proj,v_proj", density=0.1, quant="fp16",
    dp_mode="server", dp_clip_norm=0.5, dp_delta=1e-5, history_examples=True,
)
# flags and config files keep the privacy tools' own names for these run settings
RUN_ALIASES = {"n_users": "num_clients", "dp_clip": "dp_clip_norm", "delta": "dp_delta",
               "target_epsilon": "dp_target_epsilon"}


@dataclass
class PrivacyRunConfig:
    """Settings of a privacy evaluation (all overridable from a JSON/TOML ``--config`` file).

    ``noise_multiplier`` is the defended configuration reported at the top level; ``sweep`` adds more
    noise multipliers for the privacy-utility curve (0 = no DP is always included as baseline).
    """

    # the federated runs (one per noise multiplier): dp_mode/dp_clip_norm apply to the runs with noise
    run: FLSettings = field(default_factory=lambda: PRIVACY_RUN)
    cloud_model: str = "smollm2"
    canaries_per_user: int = 2
    canary_repeats: int = 2
    noise_multiplier: float = 1.0
    sweep: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])
    n_alternatives: int = 255
    mia_max_examples: int = 64
    variants: list[str] = field(default_factory=lambda: ["sketch", "logit", "gated", "draft_edit", "cloud_with_context"])
    cogen_users: int = 4
    cogen_tasks_per_user: int = 2
    max_new_tokens: int = 32
    protect_private_spans: bool = True  # logit/gated keep private spans off the wire (client/cogen/private_spans.py)
    span_audit: bool = True  # also audit protection off vs on (simulations/privacy/span_audit.py)
    attacker_fields: list[str] = field(default_factory=lambda: ["first_name", "city", "role", "manager",
                                                                  "condition", "money_item"])
    engine: str = "loopback"
    out_dir: str = "runs/privacy"

    def __post_init__(self) -> None:
        if self.run.dp_mode not in ("client", "server"):
            raise ValueError(f"privacy run dp_mode must be 'client' or 'server' (got {self.run.dp_mode!r})")
        if self.noise_multiplier < 0 or any(s < 0 for s in self.sweep):
            raise ValueError("noise multipliers must be >= 0")
        if self.run.clients_per_round > self.run.num_clients:
            raise ValueError(f"clients_per_round must be in [1, n_users={self.run.num_clients}]")
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise ValueError(f"unknown CoGenesis variant(s) {bad}; choose from {list(VARIANTS)}")

    @classmethod
    def from_flat(cls, values: dict[str, Any], base: PrivacyRunConfig | None = None) -> PrivacyRunConfig:
        """Flat settings (run-config keys, their privacy aliases, this class's own fields) over ``base``."""
        own = {f.name for f in dataclasses.fields(cls)} - {"run"}
        run_keys = {f.name for f in dataclasses.fields(FLSettings)} | set(RUN_ALIASES)
        unknown = sorted(set(values) - own - run_keys)
        if unknown:
            raise ValueError(f"unknown privacy setting(s): {', '.join(unknown)} "
                             f"(known: {', '.join(sorted(own | run_keys))})")
        base = base or cls()
        run = {RUN_ALIASES.get(k, k): (0.0 if k == "target_epsilon" and v is None else v)
               for k, v in values.items() if k in run_keys}
        if "num_clients" in run and "clients_per_round" not in run:  # fewer users: all of them every round
            run["clients_per_round"] = min(base.run.clients_per_round, int(run["num_clients"]))
        return dataclasses.replace(base, run=FLSettings.from_mapping({**base.run.to_config(), **run}),
                                   **{k: v for k, v in values.items() if k in own})

    def to_dict(self) -> dict[str, Any]:
        """Flat view under the privacy tools' names (what the report and ``privacy.json`` show)."""
        flat = {k: v for k, v in asdict(self).items() if k != "run"}
        run = self.run.to_config()
        flat.update({k: run[k] for k in ("model", "clients_per_round", "rounds", "local_steps", "batch_size", "lr",
                                         "lora_r", "lora_targets", "density", "quant", "seed", "dp_mode")})
        flat.update({alias: run[key] for alias, key in RUN_ALIASES.items()})
        flat["target_epsilon"] = self.target_epsilon
        return flat

    @property
    def target_epsilon(self) -> float | None:
        return self.run.dp_target_epsilon or None

    @property
    def sample_rate(self) -> float:
        return self.run.clients_per_round / self.run.num_clients

    def sigmas(self) -> list[float]:
        return sorted({0.0, float(self.noise_multiplier), *[float(s) for s in self.sweep]})


def quick_config(**overrides: Any) -> PrivacyRunConfig:
    """``--quick``: tiny models, few users/rounds, settings that let the no-DP run memorise canaries."""
    values: dict[str, Any] = dict(
        model="tiny", cloud_model="tiny", n_users=3, clients_per_round=3, rounds=2, local_steps=6,
        batch_size=8, lr=1e-2, lora_r=8, lora_alpha=16, lora_targets="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        density=0.25, quant="fp32", canary_repeats=4, noise_multiplier=1.0, sweep=[0.0, 1.0],
        dp_clip=0.5, n_alternatives=63, mia_max_examples=24, cogen_users=2, cogen_tasks_per_user=1,
        max_new_tokens=16, out_dir="runs/privacy-quick",
    )
    values.update(overrides)
    return PrivacyRunConfig.from_flat(values)


def load_config(path: str | Path | None, quick: bool, **overrides: Any) -> PrivacyRunConfig:
    """Defaults (or quick defaults), then a JSON/TOML file (``[privacy]`` table accepted), then overrides."""
    values = read_config_file(path, table="privacy") if path else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return quick_config(**values) if quick else PrivacyRunConfig.from_flat(values)


# --------------------------------------------------------------------------- federation runs


def _simulation_config(cfg: PrivacyRunConfig, sigma: float, data_dir: Path, out: Path) -> Any:
    run = cfg.run.replace(data_dir=str(data_dir), out_dir=str(out), eval_every=cfg.run.rounds,
                          lora_alpha=2 * cfg.run.lora_r, history_examples=True,  # canaries live in the history texts
                          dp_mode="none" if sigma == 0 else cfg.run.dp_mode, dp_noise_multiplier=sigma,
                          overwrite=True)  # the sweep owns its run folders
    return SimulationConfig(run=run, engine=cfg.engine, persist_client_state=False)


# --------------------------------------------------------------------------- the whole run


def _finite(x: Any) -> Any:
    return x if isinstance(x, int | float) and math.isfinite(x) else None


def run_privacy(cfg: PrivacyRunConfig) -> dict[str, Any]:
    """Run everything and write ``privacy.json`` + ``privacy.md`` + plots into ``cfg.out_dir``."""

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    sigmas = cfg.sigmas()
    if cfg.target_epsilon is not None:  # refuse up front, before any work
        for s in sigmas:
            if s > 0:
                dp.check_budget(dp.DPConfig(mode=cfg.run.dp_mode, clip_norm=cfg.run.dp_clip_norm, noise_multiplier=s,
                                            delta=cfg.run.dp_delta, target_epsilon=cfg.target_epsilon),
                                cfg.sample_rate, cfg.run.rounds)
    fed = d.generate_federation(d.FederationConfig(n_users=cfg.run.num_clients, seed=cfg.run.seed,
                                                   canaries_per_user=cfg.canaries_per_user,
                                                   canary_repeats=cfg.canary_repeats))
    data_dir = d.write_federation(fed, out / "data")
    fed = d.load_federation(data_dir)

    sweep: list[dict[str, Any]] = []
    flower_bytes: dict[str, list[bytes]] = {}
    for sigma in sigmas:
        run_dir = out / f"sigma_{sigma:g}"
        log.info("federation with noise multiplier %g -> %s", sigma, run_dir)
        sim = _simulation_config(cfg, sigma, data_dir, run_dir)
        t0 = time.perf_counter()
        if sigma == 0 and cfg.engine == "loopback":
            with FlowerTap() as tap:
                metrics = run_federation(sim)
            users = d.user_ids(fed)
            flower_bytes = {users[p]: blobs for p, blobs in tap.by_partition.items() if 0 <= p < len(users)}
        else:
            metrics = run_federation(sim)
        fed_seconds = time.perf_counter() - t0
        attacks = attack_run(run_dir, fed, cfg)
        eps = (metrics.get("dp") or {}).get("epsilon") if sigma > 0 else None
        planned = dp.epsilon_for(sigma, cfg.sample_rate, metrics.get("completed_rounds", cfg.run.rounds), cfg.run.dp_delta)
        sweep.append({
            "noise_multiplier": sigma,
            "dp_mode": "none" if sigma == 0 else cfg.run.dp_mode,
            "epsilon": _finite(eps if eps is not None else planned),
            "delta": cfg.run.dp_delta,
            "completed_rounds": metrics.get("completed_rounds"),
            "utility_eval_loss": metrics.get("final_eval_loss"),
            "initial_eval_loss": next((r.get("eval_loss") for r in metrics.get("rounds", []) if r.get("round") == 0),
                                      None),
            "canary_exposure": {k: attacks["canary_exposure"][k] for k in ("mean", "max", "chance")},
            "canary_exposure_per_canary": attacks["canary_exposure"]["per_canary"],
            "mia": attacks["mia"],
            "single_update_mia": single_update_mia(run_dir, fed, cfg, sigma),
            "bytes": metrics.get("bytes"),
            "federation_seconds": round(fed_seconds, 2),
            "run_dir": str(run_dir),
        })

    captures = cogen_captures(cfg, fed, out / "sigma_0")
    leakage, audits = leakage_and_audit(cfg, fed, captures, flower_bytes)
    spans = None
    if cfg.span_audit:  # protection off vs on, same users and tasks as the captures
        spans = audit_run_dir(out / "sigma_0", fed, users=d.user_ids(fed)[: cfg.cogen_users],
                              tasks_per_user=cfg.cogen_tasks_per_user, variants=cfg.variants,
                              cloud_model=cfg.cloud_model, max_new_tokens=cfg.max_new_tokens, seed=cfg.run.seed)
    chosen = next(r for r in sweep if r["noise_multiplier"] == cfg.noise_multiplier)
    base = next(r for r in sweep if r["noise_multiplier"] == 0)
    rel = None
    if chosen["utility_eval_loss"] and base["utility_eval_loss"]:
        rel = chosen["utility_eval_loss"] / base["utility_eval_loss"] - 1.0
    result = {
        "config": cfg.to_dict(),
        "epsilon": chosen["epsilon"],
        "delta": cfg.run.dp_delta,
        "noise_multiplier": cfg.noise_multiplier,
        "dp_mode": cfg.run.dp_mode,
        "utility_eval_loss": chosen["utility_eval_loss"],
        "baseline_eval_loss": base["utility_eval_loss"],
        "relative_eval_loss_increase": rel,
        "canary_exposure": chosen["canary_exposure"]["mean"],
        "canary_exposure_no_dp": base["canary_exposure"]["mean"],
        "canary_exposure_chance": chosen["canary_exposure"]["chance"],
        "mia_auc": chosen["mia"]["auc"],
        "mia_tpr_at_1pct_fpr": chosen["mia"]["tpr_at_1pct_fpr"],
        "mia_auc_no_dp": base["mia"]["auc"],
        "single_update_mia_auc": chosen["single_update_mia"]["auc"],
        "context_leakage": leakage,
        "wire_audit": {v: {k: a[k] for k in ("pass", "n_devices", "n_failed", "bytes_audited")} | {
            "hits": {dev: r["hits"][:5] for dev, r in a["devices"].items() if r["hits"]}} for v, a in audits.items()},
        "wire_audit_pass": bool(audits.get("sketch", {}).get("pass", False)),
        "flower_bytes_audited": int(sum(len(b) for bl in flower_bytes.values() for b in bl)),
        "private_span_audit": spans,
        "sweep": sweep,
        "seconds": round(time.perf_counter() - started, 1),
        "provenance": provenance(settings=cfg.to_dict(), seeds={"seed": cfg.run.seed}),
    }
    # numpy scalars and arrays are converted by results_json itself; anything else JSON lacks is written as text
    results_json.write(out / "privacy.json", result, indent=2, default=str)
    plots = privacy_plots(result, out)
    (out / "privacy.md").write_text(privacy_report(result, plots))
    return result

