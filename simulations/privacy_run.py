"""End-to-end privacy evaluation: federations with and without DP, every attack, one report.

What ``fedcogen privacy run`` does, and why each step is there:

1. Generate the synthetic federation once (profiles, private history with canaries planted only in
   their owner's history, tasks).
2. Run the real federated sparse-LoRA training (:func:`fedcogen.simulations.federation.run_federation`)
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
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedcogen.simulations.federation import load_run_adapter

log = logging.getLogger(__name__)


@dataclass
class PrivacyRunConfig:
    """Settings of a privacy evaluation (all overridable from a JSON/TOML ``--config`` file).

    ``noise_multiplier`` is the defended configuration reported at the top level; ``sweep`` adds more
    noise multipliers for the privacy-utility curve (0 = no DP is always included as baseline).
    """

    model: str = "smollm2-24l"
    cloud_model: str = "smollm2"
    n_users: int = 8
    clients_per_round: int = 8
    rounds: int = 4
    local_steps: int = 8
    batch_size: int = 4
    lr: float = 2e-3
    lora_r: int = 8
    lora_targets: str = "q_proj,v_proj"
    density: float = 0.1
    quant: str = "fp16"
    seed: int = 0
    canaries_per_user: int = 2
    canary_repeats: int = 2
    dp_mode: str = "server"
    dp_clip: float = 0.5
    delta: float = 1e-5
    noise_multiplier: float = 1.0
    sweep: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])
    target_epsilon: float | None = None
    n_alternatives: int = 255
    mia_max_examples: int = 64
    variants: list[str] = field(default_factory=lambda: ["sketch", "logit", "gated", "cloud_with_context"])
    cogen_users: int = 4
    cogen_tasks_per_user: int = 2
    max_new_tokens: int = 32
    protect_private_spans: bool = True  # logit/gated keep private spans off the wire (client/private_spans.py)
    span_audit: bool = True  # also audit protection off vs on (simulations/span_audit.py)
    attacker_fields: list[str] = field(default_factory=lambda: ["first_name", "city", "role", "manager",
                                                                  "condition", "money_item"])
    engine: str = "loopback"
    out_dir: str = "runs/privacy"

    def __post_init__(self) -> None:
        if self.dp_mode not in ("client", "server"):
            raise ValueError(f"privacy run dp_mode must be 'client' or 'server' (got {self.dp_mode!r})")
        if self.noise_multiplier < 0 or any(s < 0 for s in self.sweep):
            raise ValueError("noise multipliers must be >= 0")
        if not 1 <= self.clients_per_round <= self.n_users:
            raise ValueError(f"clients_per_round must be in [1, n_users={self.n_users}]")
        from fedcogen.client.cogen_device import VARIANTS

        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise ValueError(f"unknown CoGenesis variant(s) {bad}; choose from {list(VARIANTS)}")

    @property
    def sample_rate(self) -> float:
        return self.clients_per_round / self.n_users

    def sigmas(self) -> list[float]:
        return sorted({0.0, float(self.noise_multiplier), *[float(s) for s in self.sweep]})


def quick_config(**overrides: Any) -> PrivacyRunConfig:
    """``--quick``: tiny models, few users/rounds, settings that let the no-DP run memorise canaries."""
    values: dict[str, Any] = dict(
        model="tiny", cloud_model="tiny", n_users=3, clients_per_round=3, rounds=2, local_steps=6,
        batch_size=8, lr=1e-2, lora_r=8, lora_targets="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        density=0.25, quant="fp32", canary_repeats=4, noise_multiplier=1.0, sweep=[0.0, 1.0],
        dp_clip=0.5, n_alternatives=63, mia_max_examples=24, cogen_users=2, cogen_tasks_per_user=1,
        max_new_tokens=16, out_dir="runs/privacy-quick",
    )
    values.update(overrides)
    return PrivacyRunConfig(**values)


def load_config(path: str | Path | None, quick: bool, **overrides: Any) -> PrivacyRunConfig:
    """Defaults (or quick defaults), then a JSON/TOML file (``[privacy]`` table accepted), then overrides."""
    values: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} does not exist")
        if p.suffix == ".json":
            values = json.loads(p.read_text())
        else:
            import tomllib

            values = tomllib.loads(p.read_text())
        if isinstance(values.get("privacy"), dict):
            values = values["privacy"]
        known = {f.name for f in dataclasses.fields(PrivacyRunConfig)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown privacy setting(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return quick_config(**values) if quick else PrivacyRunConfig(**values)


# --------------------------------------------------------------------------- data helpers


def federation_canaries(fed: Any) -> list[dict[str, Any]]:
    """Each canary with the training context it was planted in (first planted copy).

    The prefix is the planted history text up to the secret and the prompt is its training prompt:
    exposure is then measured on exactly the sequence the model was trained on.
    """
    from fedcogen.client.prompts import history_prompt
    from fedcogen.simulations import data as d

    by_id = {h.text_id: h for h in fed.history}
    out = []
    for uid, canaries in fed.canaries.items():
        for i, canary in enumerate(canaries):
            planted = fed.planted_in.get(uid, {}).get(canary, [])
            _, secret = d.canary_secret(canary)
            if planted:
                h = by_id[planted[0]]
                prefix = h.text[: h.text.index(canary)] + canary[: -len(secret)]
                prompt = history_prompt(d.KIND_LABELS[h.kind])
            else:
                prefix, prompt = canary[: -len(secret)], None
            out.append({"id": f"{uid}-c{i}", "owner": uid, "text": canary, "prefix": prefix, "secret": secret,
                        "prompt": prompt})
    return out


def canary_alternative(canary: dict[str, Any], rng: np.random.Generator) -> str:
    """A same-format secret from the data generator's own sampler."""
    from fedcogen.simulations import data as d

    return d.canary_secret(d.random_canary_like(canary["text"], rng))[1]


def mia_pairs(fed: Any, limit: int, seed: int, users: Sequence[str] | None = None) -> tuple[list, list]:
    """Members = training tasks, non-members = held-out test+val tasks of the same users (same format)."""
    from fedcogen.client.prompts import device_prompt
    from fedcogen.simulations import data as d
    from fedcogen.simulations.attacks import split_disjoint

    users = list(users or d.user_ids(fed))

    def pairs(split: str) -> list[tuple[str, str]]:
        return [(device_prompt(t.instruction, t.private_context), t.reference)
                for u in users for t in fed.tasks_of(u, split)]

    members = pairs("train")
    non = pairs("test") + pairs("val")
    members, non = split_disjoint(members, non)
    rng = np.random.default_rng(seed)
    n = min(limit, len(members), len(non))
    pick = lambda xs: [xs[i] for i in sorted(rng.choice(len(xs), n, replace=False))]  # noqa: E731
    return pick(members), pick(non)


# --------------------------------------------------------------------------- federation runs


def _simulation_config(cfg: PrivacyRunConfig, sigma: float, data_dir: Path, out: Path) -> Any:
    from fedcogen.simulations.federation import SimulationConfig

    return SimulationConfig(
        model=cfg.model, data_dir=str(data_dir), num_clients=cfg.n_users, clients_per_round=cfg.clients_per_round,
        rounds=cfg.rounds, local_steps=cfg.local_steps, batch_size=cfg.batch_size, lr=cfg.lr, lora_r=cfg.lora_r,
        lora_alpha=2 * cfg.lora_r, lora_dropout=0.0, lora_targets=cfg.lora_targets, density=cfg.density,
        quant=cfg.quant, seed=cfg.seed, out_dir=str(out), eval_every=cfg.rounds,
        dp_mode="none" if sigma == 0 else cfg.dp_mode, dp_clip_norm=cfg.dp_clip, dp_noise_multiplier=sigma,
        dp_delta=cfg.delta, dp_target_epsilon=cfg.target_epsilon or 0.0, engine=cfg.engine,
        persist_client_state=False, history_examples=True,  # canaries live in the history texts
    )


class FlowerTap:
    """Keeps the serialized bytes of every reply a device sends through the loopback engine's grid."""

    def __init__(self) -> None:
        self.by_partition: dict[int, list[bytes]] = {}
        self._orig: Any = None

    def __enter__(self) -> FlowerTap:
        from flwr.common.serde import message_to_proto

        from fedcogen.simulations import federation

        self._orig = federation.LoopbackGrid.send_and_receive
        tap, orig = self, self._orig

        def send_and_receive(grid: Any, messages: Any, **kw: Any) -> list[Any]:
            replies = orig(grid, messages, **kw)
            for r in replies:
                nid = int(r.metadata.src_node_id)
                ctx = grid.contexts.get(nid)
                part = int(ctx.node_config["partition-id"]) if ctx is not None else -1
                tap.by_partition.setdefault(part, []).append(message_to_proto(r).SerializeToString())
            return replies

        federation.LoopbackGrid.send_and_receive = send_and_receive
        return self

    def __exit__(self, *exc: Any) -> None:
        from fedcogen.simulations import federation

        federation.LoopbackGrid.send_and_receive = self._orig


def attack_run(run_dir: str | Path, fed: Any, cfg: PrivacyRunConfig, progress: bool = True) -> dict[str, Any]:
    """Canary exposure + membership inference on the final global adapter of one run."""
    from fedcogen.simulations.attacks import canary_exposure, membership_inference

    lm, _ = load_run_adapter(run_dir)
    exposure = canary_exposure(lm.model, lm.tokenizer, federation_canaries(fed), cfg.n_alternatives, cfg.seed,
                               alternatives_fn=canary_alternative, progress=progress)
    members, non = mia_pairs(fed, cfg.mia_max_examples, cfg.seed)
    mia = membership_inference(lm.model, lm.tokenizer, members, non)
    return {"canary_exposure": exposure, "mia": mia}


def single_update_mia(run_dir: str | Path, fed: Any, cfg: PrivacyRunConfig, sigma: float) -> dict[str, Any]:
    """MIA on one client's update as the server would see it (no SecAgg): clipped, noised in client mode.

    The client trains ``local_steps`` from the final global adapter; its update is clipped to
    ``dp_clip`` (when DP is on) and in ``client`` mode noised with its share ``sigma*C/sqrt(n)``; the
    attacker scores that client's training tasks vs its held-out tasks under global + update.
    """
    from fedcogen.client.lora import encode_examples, get_adapter, set_adapter, train_local
    from fedcogen.protocols import dp
    from fedcogen.simulations import data as d
    from fedcogen.simulations.attacks import membership_inference

    lm, _ = load_run_adapter(run_dir)
    uid = d.user_ids(fed)[0]
    start = get_adapter(lm)
    data = encode_examples(lm.tokenizer, d.client_examples(fed, uid, "train"))
    train_local(lm, data, steps=cfg.local_steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed + 99)
    update = {k: v - start[k] for k, v in get_adapter(lm).items()}
    if sigma > 0:
        update, _ = dp.clip_dense(update, cfg.dp_clip)
        if cfg.dp_mode == "client":
            dpc = dp.DPConfig(mode="client", clip_norm=cfg.dp_clip, noise_multiplier=sigma,
                              clients_per_round=cfg.clients_per_round)
            noise = dp.gaussian_noise_like(update, dp.client_noise_std(dpc), np.random.default_rng(cfg.seed))
            update = {k: update[k] + noise[k] for k in update}
    set_adapter(lm, {k: start[k] + update[k] for k in start})
    members, non = mia_pairs(fed, cfg.mia_max_examples, cfg.seed, users=[uid])
    try:
        return {"user_id": uid, **membership_inference(lm.model, lm.tokenizer, members, non)}
    finally:
        set_adapter(lm, start)


# --------------------------------------------------------------------------- CoGenesis


def cogen_captures(cfg: PrivacyRunConfig, fed: Any, device_run: str | Path) -> dict[str, dict[str, Any]]:
    """Run every variant over gRPC on loopback; ``{variant: {user_id: WireCapture}}``."""
    from fedcogen.client.cogen_device import CogenDevice, DeviceConfig
    from fedcogen.client.wire_capture import WireCapture
    from fedcogen.models import LoadedModel, shared_model
    from fedcogen.server.cloud_service import CloudConfig, start_cloud_server
    from fedcogen.simulations import data as d

    lm, s = load_run_adapter(device_run)
    device_lm = LoadedModel(model=lm.model, tokenizer=lm.tokenizer, name=f"{s['model']}+federated", source=str(device_run))
    cloud_lm = shared_model(cfg.cloud_model, cfg.seed)
    cloud = start_cloud_server(CloudConfig(model=cfg.cloud_model, insecure=True, allow_eval_only_context=True,
                                           sketch_max_new_tokens=cfg.max_new_tokens,
                                           eval_max_new_tokens=cfg.max_new_tokens), lm=cloud_lm)
    out: dict[str, dict[str, Any]] = {}
    users = d.user_ids(fed)[: cfg.cogen_users]
    try:
        from tqdm import tqdm

        jobs = [(v, u) for v in cfg.variants for u in users]
        for variant, uid in tqdm(jobs, desc="CoGenesis captures", unit="user"):
            cap = WireCapture()
            dev = CogenDevice(DeviceConfig(device_model=s["model"], seed=cfg.seed, cloud=cloud.address, insecure=True,
                                           max_new_tokens=cfg.max_new_tokens, sketch_max_new_tokens=cfg.max_new_tokens,
                                           protect_private_spans=cfg.protect_private_spans),
                              device_lm=device_lm, capture=cap)
            try:
                for t in fed.tasks_of(uid, "test")[: cfg.cogen_tasks_per_user]:
                    dev.generate_batch([(t.instruction, t.private_context)], variant, [fed.profile(uid).private_values])
            finally:
                dev.close()
            out.setdefault(variant, {})[uid] = cap
    finally:
        cloud.stop(grace=1.0)
    return out


def leakage_and_audit(cfg: PrivacyRunConfig, fed: Any, captures: dict[str, dict[str, Any]],
                      flower: dict[str, list[bytes]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Context-leakage attacker and wire audit per variant (Flower bytes are audited with every variant)."""
    from fedcogen.models import shared_model
    from fedcogen.simulations.audit import cloud_view_text, context_leakage, profile_attributes, wire_audit

    attacker = shared_model(cfg.cloud_model, cfg.seed)
    leakage, audits = {}, {}
    for variant, caps in captures.items():
        views = {uid: cloud_view_text(cap, attacker.tokenizer) for uid, cap in caps.items()}
        truths = {uid: profile_attributes(fed.profile(uid)) for uid in caps}
        leakage[variant] = context_leakage(views, truths, model=attacker.model, tokenizer=attacker.tokenizer,
                                           fields=cfg.attacker_fields)
        combined = {uid: [cap, *flower.get(uid, [])] for uid, cap in caps.items()}
        audits[variant] = wire_audit(combined, fed.profiles, fed.canaries, tokenizer=attacker.tokenizer)
    return leakage, audits


# --------------------------------------------------------------------------- the whole run


def _finite(x: Any) -> Any:
    return x if isinstance(x, int | float) and math.isfinite(x) else None


def run_privacy(cfg: PrivacyRunConfig) -> dict[str, Any]:
    """Run everything and write ``privacy.json`` + ``privacy.md`` + plots into ``cfg.out_dir``."""
    from fedcogen.protocols import dp
    from fedcogen.simulations import data as d
    from fedcogen.simulations.federation import run_federation

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    sigmas = cfg.sigmas()
    if cfg.target_epsilon is not None:  # refuse up front, before any work
        for s in sigmas:
            if s > 0:
                dp.check_budget(dp.DPConfig(mode=cfg.dp_mode, clip_norm=cfg.dp_clip, noise_multiplier=s,
                                            delta=cfg.delta, target_epsilon=cfg.target_epsilon),
                                cfg.sample_rate, cfg.rounds)
    fed = d.generate_federation(d.FederationConfig(n_users=cfg.n_users, seed=cfg.seed,
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
        planned = dp.epsilon_for(sigma, cfg.sample_rate, metrics.get("completed_rounds", cfg.rounds), cfg.delta)
        sweep.append({
            "noise_multiplier": sigma,
            "dp_mode": "none" if sigma == 0 else cfg.dp_mode,
            "epsilon": _finite(eps if eps is not None else planned),
            "delta": cfg.delta,
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
        from fedcogen.simulations.span_audit import audit_run_dir

        spans = audit_run_dir(out / "sigma_0", fed, users=d.user_ids(fed)[: cfg.cogen_users],
                              tasks_per_user=cfg.cogen_tasks_per_user, variants=cfg.variants,
                              cloud_model=cfg.cloud_model, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    chosen = next(r for r in sweep if r["noise_multiplier"] == cfg.noise_multiplier)
    base = next(r for r in sweep if r["noise_multiplier"] == 0)
    rel = None
    if chosen["utility_eval_loss"] and base["utility_eval_loss"]:
        rel = chosen["utility_eval_loss"] / base["utility_eval_loss"] - 1.0
    result = {
        "config": asdict(cfg),
        "epsilon": chosen["epsilon"],
        "delta": cfg.delta,
        "noise_multiplier": cfg.noise_multiplier,
        "dp_mode": cfg.dp_mode,
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
    }
    (out / "privacy.json").write_text(json.dumps(result, indent=2, default=_json_default))
    plots = write_plots(result, out)
    (out / "privacy.md").write_text(markdown_report(result, plots))
    return result


def _json_default(x: Any) -> Any:
    if isinstance(x, np.integer | np.floating):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def write_plots(result: dict[str, Any], out: Path) -> list[str]:
    """epsilon vs eval loss and canary exposure vs epsilon (no-DP drawn at the right edge as 'inf')."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["sweep"]
    finite = [r["epsilon"] for r in rows if r["epsilon"] is not None]
    inf_x = (max(finite) * 1.5 if finite else 1.0)
    xs = [r["epsilon"] if r["epsilon"] is not None else inf_x for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].plot(xs, [r["utility_eval_loss"] for r in rows], "o-")
    axes[0].set_xlabel("epsilon (no DP drawn at right edge)")
    axes[0].set_ylabel("validation loss")
    axes[0].set_title("privacy vs utility")
    axes[1].plot(xs, [r["canary_exposure"]["mean"] for r in rows], "o-", label="mean exposure")
    axes[1].axhline(rows[0]["canary_exposure"]["chance"], color="gray", ls="--", label="chance")
    axes[1].plot(xs, [r["mia"]["auc"] * 10 for r in rows], "s:", label="MIA AUC x10")
    axes[1].set_xlabel("epsilon (no DP drawn at right edge)")
    axes[1].set_ylabel("bits")
    axes[1].set_title("canary exposure vs epsilon")
    axes[1].legend()
    for ax in axes:
        for x, r in zip(xs, rows, strict=True):
            ax.annotate(f"σ={r['noise_multiplier']:g}", (x, ax.get_ylim()[0]), fontsize=7, ha="center")
    fig.tight_layout()
    path = out / "privacy_utility.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path.name]


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "∞" if digits >= 0 else "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def markdown_report(result: dict[str, Any], plots: Sequence[str] = ()) -> str:
    """The readable report: sweep table, attack results per variant, verdicts against the targets."""
    cfg = result["config"]
    lines = [
        "# fedcogen privacy report",
        "",
        f"Model `{cfg['model']}` (cloud/attacker `{cfg['cloud_model']}`), {cfg['n_users']} users, "
        f"{cfg['clients_per_round']} per round, {cfg['rounds']} rounds x {cfg['local_steps']} local steps, "
        f"density {cfg['density']}, DP mode `{cfg['dp_mode']}`, clip {cfg['dp_clip']}, delta {cfg['delta']}.",
        "",
        "## Privacy-utility sweep",
        "",
        "| sigma | epsilon | eval loss | canary exposure (mean / max, chance) | MIA AUC (loss / ref) "
        "| TPR@1%FPR | single-update MIA AUC |",
        "|---:|---:|---:|---|---|---:|---:|",
    ]
    for r in result["sweep"]:
        ce, m = r["canary_exposure"], r["mia"]
        lines.append(
            f"| {r['noise_multiplier']:g} | {_f(r['epsilon'], 2)} | {_f(r['utility_eval_loss'], 4)} | "
            f"{ce['mean']:.2f} / {ce['max']:.2f} ({ce['chance']:.2f}) | {m['loss']['auc']:.3f} / "
            f"{m['reference']['auc']:.3f} | {m['tpr_at_1pct_fpr']:.3f} | {r['single_update_mia']['auc']:.3f} |"
        )
    lines += [""] + [f"![{p}]({p})" for p in plots] + ["", "## CoGenesis context leakage (cloud as attacker)", "",
                                                        "| variant | verbatim rate | substring top-1 | attacker-LM top-1 "
                                                        "| chance | wire audit |",
                                                        "|---|---:|---:|---:|---:|---|"]
    for v, lk in result["context_leakage"].items():
        wa = result["wire_audit"].get(v, {})
        lines.append(
            f"| {v} | {_f(lk['verbatim_rate'])} | {_f(lk['substring_top1'])} | {_f(lk['model_top1'])} | "
            f"{_f(lk['chance'])} | {'PASS' if wa.get('pass') else 'FAIL'} ({wa.get('n_failed', '?')} of "
            f"{wa.get('n_devices', '?')} devices leak) |"
        )
    if result.get("private_span_audit"):
        from fedcogen.simulations.span_audit import span_audit_markdown

        lines += ["", "## Private-span protection: the audit with protection off and on", "",
                  *span_audit_markdown(result["private_span_audit"])]
    rel = result["relative_eval_loss_increase"]
    lines += [
        "",
        "## Verdicts at the chosen defence",
        "",
        f"- sigma = {result['noise_multiplier']:g}: epsilon = {_f(result['epsilon'], 2)} at delta = {result['delta']}"
        f" (target <= 8: {'met' if result['epsilon'] is not None and result['epsilon'] <= 8 else 'NOT met'}).",
        f"- eval loss {_f(result['utility_eval_loss'], 4)} vs {_f(result['baseline_eval_loss'], 4)} without DP: "
        f"{'-' if rel is None else f'{100 * rel:+.1f}%'} (target <= +5%).",
        f"- canary exposure {result['canary_exposure']:.2f} bits vs {result['canary_exposure_no_dp']:.2f} without DP "
        f"(chance {result['canary_exposure_chance']:.2f}).",
        f"- MIA AUC {result['mia_auc']:.3f} (target <= 0.55) vs {result['mia_auc_no_dp']:.3f} without DP; "
        f"TPR at 1% FPR {result['mia_tpr_at_1pct_fpr']:.3f}.",
        f"- wire audit (sketch variant, CoGenesis + {result['flower_bytes_audited']} Flower bytes): "
        f"{'PASS' if result['wire_audit_pass'] else 'FAIL'}.",
        "",
        "Trust model: DP mode `server` assumes a trusted aggregator that adds dense Gaussian noise to the mean; "
        "`client` mode (distributed DP) is meant to be combined with sparse SecAgg+ "
        "(`fedcogen.server.secagg_sparse`), honest-but-curious server, >= n - t honest clients.",
        "",
        f"Total time {result['seconds']} s.",
    ]
    return "\n".join(lines) + "\n"
