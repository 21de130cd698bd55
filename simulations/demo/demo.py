"""The main job: every part of fedcogen on one small federation, with a report at the end.

Stages (each prints progress):
  1. a private personalised-writing federation (``fedcogen/dataset/``, the *rich* generator: many task kinds,
     profiles in several formats, facts the task does not need): ``users`` devices that train and
     ``heldout_users`` that never do (generalisation is measured on them)
  2. federated sparse LoRA in the Flower simulation engine (``simulations/federation/federation.py``): the device
     learns to write the user's answer from the private context
  3. the CoGenesis cloud as a separate process on loopback with TLS and a bearer token; the gate's
     threshold is calibrated on the devices' own validation tasks; every variant answers held-out tasks
     of seen users, all tasks of unseen users, and tasks of a foreign-format set that our generator did not
     write (``simulations/evaluation/foreign_sets/``; ``simulations/evaluation/evaluate.py``)
  4. wire audit of what the cloud received, quick privacy figures (exposure, MIA, epsilon)
  5. ``report.md`` + ``metrics.json`` + PNG plots in ``runs/<name>/`` (``simulations/demo/demo_report.py``)

The defaults were chosen by measurement to fit the 15-minute budget of ``make demo`` on 2 CPU cores
(docs/personalisation.md). The cloud process is always stopped, also when a stage fails.
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedcogen import results_json
from fedcogen.accelerator import gpu_share, resolve_device
from fedcogen.client.cogen.gate_training import calibrate_gate_threshold
from fedcogen.client.cogen.public_gate import gate_path
from fedcogen.config_file import read_config_file
from fedcogen.dataset import (
    FederationConfig,
    canary_records,
    generate_federation,
    names_and_places,
    random_canary_like,
    user_ids,
    validate_task_file,
    write_federation,
)
from fedcogen.models import check_model_pair, load_tokenizer
from fedcogen.protocols.privacy.dp import epsilon_for
from fedcogen.protocols.security.tls import ensure_dev_certs
from fedcogen.provenance import code_state, provenance
from fedcogen.run_config import FLSettings, attributes_of
from fedcogen.simulations.cloud.artifact import committed_artifact
from fedcogen.simulations.demo.demo_report import write_report
from fedcogen.simulations.evaluation import evaluate as evaluation
from fedcogen.simulations.evaluation.cogen_generator import CogenGenerator
from fedcogen.simulations.evaluation.evaluate import EvalConfig, group_summaries
from fedcogen.simulations.evaluation.foreign_sets_gen import HERE as FOREIGN_SETS
from fedcogen.simulations.evaluation.metrics import StyleMarkers
from fedcogen.simulations.evaluation.plots import demo_plots
from fedcogen.simulations.evaluation.writer_strength import writer_strength
from fedcogen.simulations.federation.federation import (
    SimulationConfig,
    export_adapter,
    load_run_adapter,
    run_federation,
)
from fedcogen.simulations.federation.processes import spawned_cloud
from fedcogen.simulations.privacy.attack_metrics import canary_exposure, membership_inference
from fedcogen.simulations.privacy.attack_runs import mia_pairs
from fedcogen.simulations.privacy.audit import wire_audit
from fedcogen.simulations.privacy.fact_audit import Fact, audit_facts
from fedcogen.simulations.privacy.span_audit import audit_adapter, heldout_tasks
from fedcogen.variants import CLOUD_VARIANTS, REPORT_ORDER

PUBLIC_ADAPTER = "public"
# the report's targets and comparisons need these (the personalised device against the base device and the cloud)
REQUIRED_VARIANTS = ("cloud", "device", "device_personalised")


# The demo's federated run, as a config file in the demo's folder (experiments as data)
DEMO_RUN_FILE = Path(__file__).with_name("demo_run.toml")
DEMO_RUN = FLSettings().replace(**attributes_of(read_config_file(DEMO_RUN_FILE)))
# the demo's flags and config files keep their own names for two run settings
RUN_ALIASES = {"users": "num_clients", "device_model": "model"}


@dataclass
class DemoConfig:
    """Demo settings; every field can be overridden by a flag of the same name (``--local-steps`` ...)."""

    name: str = "demo"
    out: str = "runs"
    quick: bool = False
    # the federated run: its devices (num_clients) are the training users, its model the device model
    run: FLSettings = field(default_factory=lambda: DEMO_RUN)
    heldout_users: int = 4  # devices that never train: evaluated to show generalisation
    # the federation's data: "rich" (issue 26: an adapter trained on the basic generator learned its templates and
    # was worse than the base device on users written by someone else) with contexts of up to this many words
    variety: str = "rich"
    max_context_words: int = 150
    # a task file our generator did not write, reported as its own group (1 task per user, this many users;
    # 0 = skip): users in another format, never used for tuning (simulations/evaluation/foreign_sets/README.md)
    foreign_set: str = str(FOREIGN_SETS / "cogenesis.jsonl")
    foreign_tasks: int = 12
    # the variants answered (comma-separated, any of fedcogen.variants.REPORT_ORDER); draft_edit is left out by
    # default: measured below the personalised device on validation and test (docs/results/draft-edit.md), and
    # an eighth variant costs the demo's time budget; add it with --variants
    variants: str = ",".join(v for v in REPORT_ORDER if v != "draft_edit")
    seen_tasks: int = 2  # held-out test tasks per training user
    unseen_tasks: int = 4  # test tasks per held-out user
    max_new_tokens: int = 96  # references average ~70 tokens; the personalised device stops at EOS
    sketch_max_new_tokens: int = 48  # an outline of 3-5 short points
    gate_call_share: float = 0.25  # the gated variant asks the cloud for about this share of tokens
    eval_batch: int = 32  # answers decoded in lockstep (the cloud batches as many sessions)
    cloud_model: str = "smollm2"
    # the cloud provider's LoRA, trained on public data only (simulations/cloud/): "public" = the committed,
    # digest-checked artifact; "" = the bare cloud model; else a LoRA folder
    cloud_adapter: str = PUBLIC_ADAPTER
    # canary exposure needs the canary-bearing past texts in training (history_examples); the demo trains
    # on tasks only, so exposure is off (0) by default; `fedcogen privacy run` measures it
    canary_alternatives: int = 0
    mia_examples: int = 24
    span_audit_tasks: int = 2  # test tasks per held-out user in the private-span audit (0 = skip it)

    def __post_init__(self) -> None:
        r = self.run
        if self.quick:
            self.cloud_model = "tiny-large"
            self.cloud_adapter = ""  # the public artifact is a LoRA of smollm2
            self.max_new_tokens = min(self.max_new_tokens, 12)
            self.heldout_users = min(self.heldout_users, 1)
            self.run = r = r.replace(model="tiny", num_clients=min(r.num_clients, 3),
                                     clients_per_round=min(r.clients_per_round, 2), rounds=min(r.rounds, 2),
                                     local_steps=min(r.local_steps, 2), lora_r=4, lora_alpha=8,
                                     lora_targets="q_proj,v_proj", max_seq_len=128)
            self.seen_tasks, self.unseen_tasks = min(self.seen_tasks, 1), min(self.unseen_tasks, 2)
            self.mia_examples = min(self.mia_examples, 8)
            self.foreign_tasks = min(self.foreign_tasks, 2)
        if r.num_clients < 2:
            raise ValueError("demo needs at least 2 training users")
        if self.heldout_users < 1:
            raise ValueError("demo needs at least 1 held-out user (generalisation is part of the result)")
        if r.clients_per_round > r.num_clients:
            raise ValueError(f"clients_per_round must be in [1, users={r.num_clients}]")
        chosen = self.variant_list
        bad = [v for v in chosen if v not in REPORT_ORDER]
        if bad or len(set(chosen)) != len(chosen):
            raise ValueError(f"variants: {bad or 'duplicates'} in {self.variants!r}; choose from {', '.join(REPORT_ORDER)}")
        missing = [v for v in REQUIRED_VARIANTS if v not in chosen]
        if missing:
            raise ValueError(f"variants must include {', '.join(missing)}: the report's targets compare with them")
        if self.foreign_tasks < 0:
            raise ValueError(f"foreign_tasks must be >= 0 (got {self.foreign_tasks})")
        if self.foreign_tasks and not Path(self.foreign_set).is_file():
            raise FileNotFoundError(f"foreign_set {self.foreign_set} is not a file (set foreign_tasks = 0 to skip it)")
        if not 0 < self.gate_call_share < 1:
            raise ValueError(f"gate_call_share must be in (0, 1) (got {self.gate_call_share})")

    @property
    def variant_list(self) -> list[str]:
        """The chosen variants in the report's order."""
        chosen = [v.strip() for v in self.variants.split(",") if v.strip()]
        return sorted(chosen, key=lambda v: REPORT_ORDER.index(v) if v in REPORT_ORDER else len(REPORT_ORDER))

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / self.name


def resolve_cloud_adapter(cfg: DemoConfig) -> dict[str, Any]:
    """Which LoRA the cloud runs with and where it came from (the report says it)."""
    if not cfg.cloud_adapter:
        return {"path": None, "source": "none: the bare cloud model"}
    if cfg.cloud_adapter == PUBLIC_ADAPTER:
        path = committed_artifact()  # refuses a changed recipe or weights file
        manifest = json.loads((path / "manifest.json").read_text())
        return {"path": str(path), "source": "the committed public-training artifact (simulations/cloud/, not trained "
                "by this run)", "weights_sha256": manifest["weights_sha256"], "recipe_digest": manifest["recipe_digest"]}
    if not Path(cfg.cloud_adapter).is_dir():
        raise FileNotFoundError(f"cloud_adapter {cfg.cloud_adapter} is not a folder (or use '{PUBLIC_ADAPTER}' / '')")
    return {"path": cfg.cloud_adapter, "source": "a LoRA folder given by cloud_adapter"}


def _stage(n: int, title: str) -> float:
    print(f"\n=== [{n}/5] {title}", flush=True)
    return time.perf_counter()


GROUP_NAMES = {"seen_users": "of training users", "unseen_users": "of held-out users",
               "foreign_set": "of the foreign-format set"}


class _RecordingGenerator:
    """Delegates to the real generator and keeps what the cloud received, per variant and user,
    so the wire audit runs on exactly the bytes of the evaluated generations."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.received: dict[str, dict[str, list[Any]]] = {}

    def generate_batch(self, tasks: list[Any], variant: str) -> list[Any]:
        results = self.inner.generate_batch(tasks, variant)
        for task, res in zip(tasks, results, strict=True):
            got = res.cloud_received or []
            got = got if isinstance(got, list) else [got]
            self.received.setdefault(variant, {}).setdefault(task.user_id, []).extend(got)
        return results


def _federate(cfg: DemoConfig, data_dir: Path) -> dict[str, Any]:
    run = cfg.run.replace(data_dir=str(data_dir), out_dir=str(cfg.run_dir / "federation"),
                          eval_every=max(1, cfg.run.rounds // 2), overwrite=True)  # the demo owns its run_dir
    sim = SimulationConfig(run=run, engine="flower", num_cpus_per_client=1.0,
                           num_gpus_per_client=gpu_share(run.device, run.clients_per_round))
    result = run_federation(sim)
    result["adapter_dir"] = str(export_adapter(sim.run.out_dir))
    ledger = json.loads((Path(sim.run.out_dir) / "ledger.json").read_text())["summary"]
    result["ledger_summary"] = {k: ledger[k] for k in ("totals", "messages", "dense_fp32_adapter_bytes")}
    # the per-round lines were already printed live by the ServerApp (forwarded by the flwr run driver)
    t = ledger["totals"]
    print(f"  every message both ways: {t['all']:,} B in {ledger['messages']} messages (up {t['up']:,}, "
          f"down {t['down']:,}); one dense fp32 adapter is {ledger['dense_fp32_adapter_bytes']:,} B")
    return result


def foreign_tasks(cfg: DemoConfig) -> list[Any]:
    """The first task of each of the first ``foreign_tasks`` users of the foreign-format set (validated)."""
    if not cfg.foreign_tasks:
        return []
    out: dict[str, Any] = {}
    for task in validate_task_file(cfg.foreign_set, strict=True):
        out.setdefault(str(task.user_id), task)
    return list(out.values())[: cfg.foreign_tasks]


def _eval_tasks(cfg: DemoConfig, fed: Any) -> dict[str, list[Any]]:
    """Seen users' unseen test tasks, every test task of the users that never trained, and the foreign set's."""
    ids = user_ids(fed)
    seen = [t for u in ids[: cfg.run.num_clients] for t in fed.tasks_of(u, "test")[: cfg.seen_tasks]]
    unseen = [t for u in ids[cfg.run.num_clients:] for t in fed.tasks_of(u, "test")[: cfg.unseen_tasks]]
    groups = {"seen_users": seen, "unseen_users": unseen, "foreign_set": foreign_tasks(cfg)}
    clash = {str(t.user_id) for t in groups["foreign_set"]} & set(ids)
    if clash:
        raise ValueError(f"foreign_set {cfg.foreign_set} has user ids of the federation: {sorted(clash)[:5]}")
    return {k: v for k, v in groups.items() if v}


def _evaluate(cfg: DemoConfig, fed: Any, adapter_dir: str, tls_dir: Path, token: str,
              cloud_adapter: str | None) -> dict[str, Any]:
    groups = _eval_tasks(cfg, fed)
    profiles = {p.user_id: StyleMarkers.from_profile(asdict(p)) for p in fed.profiles}
    log_path = cfg.run_dir / "cloud.log"
    out: dict[str, Any] = {}
    # lockstep batches of eval_batch sessions: the cloud waits long enough for every step of a batch to
    # arrive, so the whole batch shares one packed forward each time
    serve = ["--max-batch", str(cfg.eval_batch), "--batch-window-ms", "10", "--device", cfg.run.device]
    serve += ["--adapter", cloud_adapter] if cloud_adapter else []
    with spawned_cloud(cfg.cloud_model, log_path=log_path, wait=False,
                       tls_dir=tls_dir, token=token, timeout_s=600, serve_args=serve) as cloud:
        print(f"  cloud process pid {cloud.process.pid} on {cloud.address} (TLS + bearer token), log {log_path}")
        out["writer_strength"] = writer_strength(cfg.run.model, cfg.cloud_model,
                                                 groups["seen_users"] + groups["unseen_users"], cfg.run.max_seq_len,
                                                 cloud_adapter=cloud_adapter)
        ws = out["writer_strength"]
        print(f"  loss on the reference answers from the instruction alone: cloud {ws['cloud_loss']:.3f}, "
              f"device {ws['device_loss']:.3f} ({'cloud is the stronger writer' if ws['cloud_stronger'] else 'CLOUD IS NOT STRONGER'}); "
              f"cloud with the private context {ws['cloud_context_loss']:.3f} (upper bound)")
        gen = CogenGenerator.create(device_model=cfg.run.model, cloud_address=cloud.address, adapter=adapter_dir,
                                    tls_dir=str(tls_dir), token=token, max_new_tokens=cfg.max_new_tokens,
                                    sketch_max_new_tokens=cfg.sketch_max_new_tokens, seed=cfg.run.seed,
                                    personalised=True, device=cfg.run.device)
        val = [t for u in sorted({t.user_id for t in groups["seen_users"]}) for t in fed.tasks_of(u, "val")[:2]]
        threshold = calibrate_gate_threshold(gen.personalised, [(t.instruction, t.private_context) for t in val],
                                             cfg.gate_call_share)
        for dev in (gen.device, gen.personalised):
            dev.config.gated_threshold = threshold
        out["gate"] = {"metric": "entropy", "threshold": threshold, "target_call_share": cfg.gate_call_share,
                       "calibrated_on": f"{len(val)} validation tasks of training users, on the device"}
        print(f"  gate: ask the cloud when the device's entropy exceeds {threshold:.3f} nats "
              f"(calibrated on {len(val)} validation tasks for {cfg.gate_call_share:.0%} of tokens)")
        cloud.wait_ready()
        # the guard sees each task's private context only: the profiles are the wire audit's answer key
        recorder = _RecordingGenerator(gen)
        # the foreign set last: its ~2,000-token contexts get batches of their own instead of padding ours
        tasks = [t for g in groups.values() for t in g]
        sizes = ", ".join(f"{len(g)} {GROUP_NAMES[k]}" for k, g in groups.items())
        print(f"  {len(tasks)} tasks of {len({t.user_id for t in tasks})} users ({sizes}) x {len(cfg.variant_list)} "
              "variants", flush=True)
        try:
            ecfg = EvalConfig(seed=cfg.run.seed, batch_size=cfg.eval_batch)
            # through the module, so that a test can replace the evaluator; foreign facts: names and places an
            # answer has that its own context lacks (the generator's pools, other users' facts)
            result = evaluation.evaluate(tasks, recorder, cfg.variant_list, profiles=profiles, config=ecfg,
                                         foreign_terms=names_and_places()).to_dict()
        finally:
            gen.close()
    out["all_users"] = result
    out["groups"] = group_summaries(result, {k: {str(t.user_id) for t in g} for k, g in groups.items()},
                                    cfg.variant_list, ecfg)
    out["failures"] = failure_summary(result["counts"])
    for line in out["failures"]:
        print(f"  {line}")
    out["received"] = recorder.received
    return out


def failure_summary(counts: dict[str, dict[str, int]]) -> list[str]:
    """One line per variant with answers that fell back to the device alone or failed (empty when every
    answer ran as its variant): those answers are not in the variant's means, and the demo exits 1."""
    lines = []
    for v, c in counts.items():
        if c["fell_back"] or c["failed"]:
            lines.append(f"{v}: {c['fell_back']} of {c['tasks']} answers fell back to the device alone, "
                         f"{c['failed']} failed; left out of {v}'s means")
    return lines


def foreign_fact_audit(received: dict[str, dict[str, list[Any]]], tasks: list[Any]) -> dict[str, dict[str, Any]]:
    """Per variant: how many of the foreign set's private facts the cloud saw (fact audit: exact, near and
    decoded-token matches), from each task's ``private_facts``, the answer key the device's guard never reads."""
    facts = {str(t.user_id): [Fact(f, "fact") for f in (t.private_facts or [])] for t in tasks}
    out = {}
    for variant, by_user in received.items():
        if variant not in CLOUD_VARIANTS:
            continue  # the device alone sends nothing
        seen = total = 0
        for user, user_facts in facts.items():
            texts = [x.decode("utf-8", "replace") if isinstance(x, bytes | bytearray) else str(x)
                     for x in by_user.get(user, [])]
            hits = audit_facts(user_facts, texts=texts)
            seen, total = seen + sum(h["seen"] for h in hits), total + len(hits)
        out[variant] = {"facts_seen": seen, "facts": total}
    return out


def _privacy(cfg: DemoConfig, fed: Any, received: dict, fed_result: dict, foreign: list[Any]) -> dict[str, Any]:
    tok = load_tokenizer(cfg.run.model)
    ours = set(user_ids(fed))
    audit = {v: wire_audit({u: c for u, c in by_user.items() if u in ours}, fed.profiles, fed.canaries, tokenizer=tok)
             for v, by_user in received.items()}
    for v, a in audit.items():
        print(f"  wire audit {v:<20} {'PASS' if a['pass'] else 'FAIL'}")
    foreign_audit = foreign_fact_audit(received, foreign) if foreign else {}
    for v, a in foreign_audit.items():
        print(f"  foreign set: {v:<20} {a['facts_seen']} of {a['facts']} private facts seen by the cloud")
    lm, _ = load_run_adapter(Path(fed_result["adapter_dir"]).parent)
    train_users = set(user_ids(fed)[: cfg.run.num_clients])
    exposure = None
    if cfg.canary_alternatives > 0:
        canaries = [c for c in canary_records(fed) if c["owner"] in train_users]
        exposure = canary_exposure(lm.model, lm.tokenizer, canaries, cfg.canary_alternatives, cfg.run.seed,
                                   alternatives_fn=random_canary_like, progress=True)
    members, non = mia_pairs(fed, cfg.mia_examples, cfg.run.seed, users=sorted(train_users))
    mia = membership_inference(lm.model, lm.tokenizer, members, non)
    if exposure is not None:
        print(f"  canary exposure {exposure['mean']:.2f} bits (chance {exposure['chance']:.2f})")
    print(f"  membership inference on training tasks: AUC {mia['auc']:.3f}, TPR@1%FPR {mia['tpr_at_1pct_fpr']:.3f}")
    # This demo trains without DP; say what the same schedule would cost with client-level DP (sigma = 1).
    eps = epsilon_for(1.0, cfg.run.clients_per_round / cfg.run.num_clients, cfg.run.rounds, 1e-5)
    return {
        "wire_audit": {v: {"pass": a["pass"], "n_failed": a["n_failed"]} for v, a in audit.items()},
        "wire_audit_pass_private_variants": all(a["pass"] for v, a in audit.items() if v != "cloud_with_context"),
        "foreign_set_fact_audit": foreign_audit,
        "canary_exposure_mean": exposure["mean"] if exposure else None,
        "canary_exposure_chance": exposure["chance"] if exposure else None,
        "canaries_trained_on": False,
        "mia_auc": mia["auc"], "mia_tpr_at_1pct_fpr": mia["tpr_at_1pct_fpr"],
        "dp": {"used": False, "epsilon_if_sigma_1": eps, "delta": 1e-5,
               "note": "demo run has no DP; `fedcogen privacy run` trains with DP and reports epsilon"},
    }


def _span_audit(cfg: DemoConfig, fed: Any, metrics: dict[str, Any]) -> dict[str, Any]:
    """Protection off vs on for logit and gated on held-out users' tasks (the audit that can fail)."""
    adapter = metrics["federation"]["adapter_dir"]
    gate = gate_path(adapter)
    result = audit_adapter(fed, heldout_tasks(fed, user_ids(fed)[cfg.run.num_clients:], cfg.span_audit_tasks),
                           device_model=cfg.run.model, cloud_model=cfg.cloud_model, adapter=adapter,
                           gate_file=str(gate) if gate.is_file() else None, max_new_tokens=cfg.max_new_tokens,
                           gated_threshold=metrics["evaluation"]["gate"]["threshold"], seed=cfg.run.seed)
    for key, r in result["settings"].items():
        print(f"  private spans {key:<24} wire audit {'PASS' if r['audit_pass'] else 'FAIL'}, "
              f"{r['facts_seen']} private facts seen by the cloud")
    if cfg.quick:
        print("  (quick demo: random models write no private facts, so this audit is not meaningful here)")
    return result


def run_demo(cfg: DemoConfig) -> dict[str, str]:
    started = code_state()  # the code this run imported; a commit made while it runs is not its code
    check_model_pair(cfg.run.model, cfg.cloud_model)  # a mismatched pair fails before any work starts
    resolve_device(cfg.run.device)  # so does a device this machine lacks
    cloud_adapter = resolve_cloud_adapter(cfg)  # and a changed or missing cloud artifact
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {"config": asdict(cfg), "stage_seconds": {}, "cloud_adapter": cloud_adapter}
    secs = metrics["stage_seconds"]

    n_users = cfg.run.num_clients + cfg.heldout_users
    t = _stage(1, f"private federation ({cfg.variety} generator): {cfg.run.num_clients} training users + "
                  f"{cfg.heldout_users} held-out users (seed {cfg.run.seed})")
    fed = generate_federation(FederationConfig(n_users=n_users, seed=cfg.run.seed, variety=cfg.variety,
                                               max_context_words=cfg.max_context_words), progress=True)
    data_dir = run_dir / "data"
    if data_dir.exists():
        shutil.rmtree(data_dir)
    write_federation(fed, data_dir)
    print(f"  written to {data_dir}: {sum(len(v) for v in fed.tasks.values())} tasks, {len(fed.history)} private texts")
    secs["data"] = round(time.perf_counter() - t, 1)

    t = _stage(2, f"federated sparse LoRA on {cfg.run.model}: {cfg.run.rounds} rounds x {cfg.run.clients_per_round} "
                  f"of {cfg.run.num_clients} clients x {cfg.run.local_steps} steps (density {cfg.run.density})")
    metrics["federation"] = _federate(cfg, data_dir)
    secs["federation"] = round(time.perf_counter() - t, 1)

    t = _stage(3, f"cloud {cfg.cloud_model} over gRPC with TLS + token; evaluating {len(cfg.variant_list)} variants")
    cloud_adapter = metrics["cloud_adapter"]
    print(f"  cloud LoRA: {cloud_adapter['source']}" + (f", {cloud_adapter['path']}" if cloud_adapter["path"] else ""))
    tls_dir = run_dir / "tls"
    ensure_dev_certs(tls_dir)
    ev = _evaluate(cfg, fed, metrics["federation"]["adapter_dir"], tls_dir, secrets.token_urlsafe(24),
                   cloud_adapter["path"])
    received = ev.pop("received")
    metrics["evaluation"] = ev
    secs["cloud_and_eval"] = round(time.perf_counter() - t, 1)
    print("  cloud process stopped")

    t = _stage(4, "wire audit and quick privacy figures")
    metrics["privacy"] = _privacy(cfg, fed, received, metrics["federation"], foreign_tasks(cfg))
    if cfg.span_audit_tasks > 0:
        metrics["privacy"]["span_audit"] = _span_audit(cfg, fed, metrics)
    secs["privacy"] = round(time.perf_counter() - t, 1)

    _stage(5, "report and plots")
    plots = demo_plots(run_dir, metrics)
    metrics_path = run_dir / "metrics.json"
    metrics["provenance"] = provenance(settings=asdict(cfg), seeds={"seed": cfg.run.seed}, started=started)
    results_json.write(metrics_path, metrics, indent=2, default=str)
    report = run_dir / "report.md"
    report.write_text(write_report(cfg, metrics, plots))
    return {"report": str(report), "metrics": str(metrics_path), "failures": ev["failures"]}
