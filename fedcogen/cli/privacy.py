"""`fedcogen privacy ...`: DP federations + attacks + audits, and single attacks on an existing run.

Subcommands:

* ``run``      federations over a noise-multiplier sweep, canary exposure, membership inference,
               CoGenesis context leakage and the wire audit; JSON + markdown report + plots.
* ``exposure`` canary exposure of a finished federation run (its checkpoint + data folder).
* ``mia``      membership inference on a finished run.
* ``epsilon``  epsilon of a planned run from the RDP accountant (and the rounds/noise that fit a target).
* ``spans``    private-span audit of a personalised adapter: protection off (must fail) vs on.
* ``corpora``  private-span detector recall/precision per corpus + the per-fact wire audit (answer key apart).
* ``secagg``   sparse SecAgg+ vs dense SecAgg+ vs plain sparse: bytes and time in the Flower simulation.
* ``scale``    DP at cross-device scale (1,000 clients): epsilon at 1/N^1.1, loss cost, exposure, MIA.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from fedcogen.cli.common import DEVICE_MODEL, add_command, add_group, write_json
from fedcogen.cli.privacy_scale import add_scale


def register(sub: argparse._SubParsersAction) -> None:
    _, ps = add_group(sub, "privacy", "differential privacy, secure aggregation, privacy attacks and the wire audit",
                      dest="privacy_command", description=__doc__)

    r = add_command(
        ps, "run", "federations with/without DP + all attacks + wire audit -> JSON + markdown report", func=_run,
        description=(
            "Generate a federation, train it with every noise multiplier of the sweep (0 = no DP), attack "
            "each final adapter (canary exposure, membership inference), run CoGenesis variants over gRPC "
            "and attack/audit what the cloud received. Writes privacy.json, privacy.md and "
            "privacy_utility.png into --out. --quick uses tiny random models (a few minutes)."
        ),
    )
    r.add_argument("--quick", action="store_true", help="tiny models, 4 users, 3 rounds: a few minutes")
    r.add_argument("--config", help="JSON/TOML file with PrivacyRunConfig fields (a [privacy] table is accepted)")
    r.add_argument("--json", required=True, help="where to write the result JSON (also copied into --out)")
    r.add_argument("--out", default=None, help="run folder (default runs/privacy or runs/privacy-quick)")
    r.add_argument("--model", default=None, help="device/federated model (smollm2-27l, smollm2-24l, smollm2-half, smollm2, tiny, path; default: the privacy run's own, smollm2-24l)")
    r.add_argument("--cloud-model", default=None, help="cloud model, also the context-leakage attacker")
    r.add_argument("--rounds", type=int, default=None, help="federated rounds")
    r.add_argument("--num-clients", "--users", type=int, default=None, dest="n_users", help="number of users / clients")
    r.add_argument("--dp-mode", choices=["server", "client"], default=None,
                   help="server: trusted aggregator adds dense noise; client: distributed noise (for SecAgg)")
    r.add_argument("--noise-multiplier", type=float, default=None, help="sigma of the defended configuration")
    r.add_argument("--sweep", default=None, help="comma-separated noise multipliers for the curve (0 = no DP)")
    r.add_argument("--dp-clip-norm", "--clip", type=float, default=None, dest="dp_clip",
                   help="L2 clip norm C of each client update")
    r.add_argument("--delta", type=float, default=None, help="target delta (default 1e-5)")
    r.add_argument("--target-epsilon", type=float, default=None,
                   help="refuse the run up front if a planned setting exceeds this epsilon; stop early in a run")
    r.add_argument("--seed", type=int, default=None)
    r.add_argument("--no-protect", dest="protect_private_spans", action="store_false", default=None,
                   help="CoGenesis captures without private-span protection (the span audit runs both anyway)")

    e = add_command(ps, "exposure", "canary exposure of a finished federation run", func=_exposure,
                    description="Canary exposure (secret sharer) of the final global adapter of RUN_DIR.")
    e.add_argument("run_dir", help="federation output folder (checkpoint.npz)")
    e.add_argument("--data", default=None, help="federation data folder (default: the run's data_dir)")
    e.add_argument("--alternatives", type=int, default=255, help="random same-format secrets per canary")
    e.add_argument("--json", default=None, help="write the result here")
    e.add_argument("--seed", type=int, default=0)

    m = add_command(ps, "mia", "membership inference on a finished federation run", func=_mia,
                    description="Loss and reference-calibrated MIA: training tasks vs held-out tasks.")
    m.add_argument("run_dir")
    m.add_argument("--data", default=None)
    m.add_argument("--max-examples", type=int, default=64)
    m.add_argument("--json", default=None)
    m.add_argument("--seed", type=int, default=0)

    a = add_command(ps, "epsilon", "epsilon of a planned DP run (RDP accountant)", func=_epsilon,
                    description="Epsilon after ROUNDS rounds at NOISE and client sample rate Q, and what fits a target.")
    a.add_argument("--noise-multiplier", type=float, required=True)
    a.add_argument("--sample-rate", type=float, required=True, help="clients_per_round / num_clients")
    a.add_argument("--rounds", type=int, required=True)
    a.add_argument("--delta", type=float, default=1e-5)
    a.add_argument("--target-epsilon", type=float, default=None)

    sp = add_command(ps, "spans", "private-span audit: protection off vs on on a personalised adapter", func=_spans,
                     description="Run sketch, logit and gated on held-out tasks with private-span protection "
                     "off (the unprotected baseline must FAIL the wire audit) and on (must pass); "
                     "facts seen by the cloud, attacker recovery, quality cost with paired CIs, "
                     "and fixed-weight vs learned-gate fusion when the adapter has a gate.")
    sp.add_argument("--adapter", required=True, help="personalised adapter folder (fusion_gate.pt inside is used)")
    sp.add_argument("--data", required=True, help="federation folder")
    sp.add_argument("--device-model", default=DEVICE_MODEL)
    sp.add_argument("--cloud-model", default="smollm2")
    sp.add_argument("--users", help="comma-separated user ids (default: the last --last-users users)")
    sp.add_argument("--last-users", type=int, default=4, help="audit the last N users (the held-out ones)")
    sp.add_argument("--tasks", type=int, default=4, help="test tasks per user")
    sp.add_argument("--max-new-tokens", type=int, default=64)
    sp.add_argument("--gated-threshold", type=float, default=2.5, help="entropy (nats) above which gated asks")
    sp.add_argument("--attacker-lm", action="store_true", help="also run the cloud model as the attacker (slower)")
    sp.add_argument("--json", default=None)
    sp.add_argument("--report", default=None, help="markdown table here")

    co = add_command(ps, "corpora", "private-span detector recall/precision per corpus + per-fact wire audit",
                     func=_corpora,
                     description="Measure the private-span detector on the span corpora (simulations/privacy/span_corpora: "
                     "CoGenesis-style profiles, JSON/YAML/key-value profiles, free text; facts in a separate answer "
                     "key the guard never sees), then run logit and gated over gRPC with a scripted device that "
                     "writes every fact, protection off and on, and report per fact whether the cloud saw it "
                     "(exact, near and token-id matches). Exit 1 if a fact reached the cloud with protection on.")
    co.add_argument("--split", choices=("dev", "test", "heldout2"), default="heldout2",
                    help="dev, test: tuned on; heldout2: written after the detector was frozen (default)")
    co.add_argument("--corpora", default=None, help="comma-separated corpus names (default: all)")
    co.add_argument("--wire-items", type=int, default=0, help="items per corpus on the wire (0 = all of the split)")
    co.add_argument("--no-wire", action="store_true", help="detector measurement only (no cloud, seconds)")
    co.add_argument("--private-spans", default=None, help="SpanDetector config file (JSON/TOML/YAML)")
    co.add_argument("--json", default=None)
    co.add_argument("--report", default=None, help="markdown tables here")

    add_scale(ps)

    s = add_command(ps, "secagg", "sparse SecAgg+ vs dense SecAgg+ vs plain sparse (bytes, time)", func=_secagg,
                    description="Runs Flower's SecAggPlusWorkflow + secaggplus_mod in the simulation engine with "
                    "the shared-random-support sparse scheme, dense SecAgg+ and plain top-k sparse.")
    s.add_argument("--num-clients", "--clients", type=int, default=4, dest="num_clients")
    s.add_argument("--rounds", type=int, default=3)
    s.add_argument("--dim", type=int, default=0, help="vector length (0 = the LoRA adapter size of --model)")
    s.add_argument("--model", default="smollm2", help="model whose adapter size sets --dim when it is 0")
    s.add_argument("--density", type=float, default=0.01)
    s.add_argument("--out", default="runs/secagg")
    s.add_argument("--json", default=None)
    s.add_argument("--real-path", action="store_true", help="the federated LoRA run itself with secagg off / plain / "
                   "secaggplus (tiny model, --num-clients clients, --rounds rounds): bytes and time side by side")


def _write(path: str | None, result: Any, args: argparse.Namespace | None = None) -> None:
    if path:  # numpy values are converted by fedcogen.results_json; anything else JSON lacks is written as text
        write_json(path, result, indent=2, default=str, args=args)
        print(f"wrote {path}")


def _run(args: argparse.Namespace) -> int:
    from fedcogen.simulations.privacy.privacy_run import load_config, run_privacy

    sweep = [float(x) for x in args.sweep.split(",")] if args.sweep else None
    cfg = load_config(
        args.config, args.quick, model=args.model, cloud_model=args.cloud_model, rounds=args.rounds,
        n_users=args.n_users, dp_mode=args.dp_mode, noise_multiplier=args.noise_multiplier, sweep=sweep,
        dp_clip=args.dp_clip, delta=args.delta, target_epsilon=args.target_epsilon, seed=args.seed, out_dir=args.out,
        protect_private_spans=args.protect_private_spans,
    )
    result = run_privacy(cfg)
    _write(args.json, result, args)
    print(f"report: {Path(cfg.out_dir) / 'privacy.md'}")
    eps = result["epsilon"]
    print(f"epsilon {eps if eps is not None else math.inf:.3g} (delta {result['delta']}), eval loss "
          f"{result['utility_eval_loss']:.4f} (no DP {result['baseline_eval_loss']:.4f}), exposure "
          f"{result['canary_exposure']:.2f} (no DP {result['canary_exposure_no_dp']:.2f}), MIA AUC "
          f"{result['mia_auc']:.3f}, wire audit {'PASS' if result['wire_audit_pass'] else 'FAIL'}")
    return 0


def _run_context(run_dir: str, data: str | None) -> tuple[Any, Any]:
    from fedcogen.dataset import load_federation
    from fedcogen.server.fl.checkpoint import load_checkpoint
    from fedcogen.simulations.privacy.privacy_run import quick_config

    _, meta = load_checkpoint(run_dir)
    s = meta.get("settings", {})
    data_dir = data or s.get("data_dir")
    if not data_dir or not Path(data_dir).is_dir():
        raise FileNotFoundError(f"federation data folder not found ({data_dir!r}): pass --data")
    cfg = quick_config(model=s["model"], seed=int(s.get("seed", 0)))
    return load_federation(data_dir), cfg


def _exposure(args: argparse.Namespace) -> int:
    from fedcogen.dataset import canary_records, random_canary_like
    from fedcogen.simulations.federation.federation import load_run_adapter
    from fedcogen.simulations.privacy.attack_metrics import canary_exposure

    fed, _ = _run_context(args.run_dir, args.data)
    lm, _ = load_run_adapter(args.run_dir)
    res = canary_exposure(lm.model, lm.tokenizer, canary_records(fed), args.alternatives, args.seed,
                          alternatives_fn=random_canary_like, progress=True)
    print(f"mean exposure {res['mean']:.2f} bits, max {res['max']:.2f} (chance {res['chance']:.2f}, "
          f"max possible {res['per_canary'][0]['max_exposure']:.2f})")
    _write(args.json, res, args)
    return 0


def _mia(args: argparse.Namespace) -> int:
    from fedcogen.simulations.federation.federation import load_run_adapter
    from fedcogen.simulations.privacy.attack_metrics import membership_inference
    from fedcogen.simulations.privacy.attack_runs import mia_pairs

    fed, _ = _run_context(args.run_dir, args.data)
    lm, _ = load_run_adapter(args.run_dir)
    members, non = mia_pairs(fed, args.max_examples, args.seed)
    res = membership_inference(lm.model, lm.tokenizer, members, non)
    print(f"MIA AUC loss {res['loss']['auc']:.3f}, reference {res['reference']['auc']:.3f}; "
          f"TPR@1%FPR {res['tpr_at_1pct_fpr']:.3f} ({res['n_members']} members, {res['n_non_members']} non-members)")
    _write(args.json, res, args)
    return 0


def _epsilon(args: argparse.Namespace) -> int:
    from fedcogen.protocols.privacy import dp

    eps = dp.epsilon_for(args.noise_multiplier, args.sample_rate, args.rounds, args.delta)
    out: dict[str, Any] = {"epsilon": eps, "delta": args.delta, "noise_multiplier": args.noise_multiplier,
                           "sample_rate": args.sample_rate, "rounds": args.rounds}
    print(f"epsilon = {eps:.4g} at delta = {args.delta}")
    if args.target_epsilon is not None:
        out["max_rounds"] = dp.max_rounds_for(args.target_epsilon, args.noise_multiplier, args.sample_rate, args.delta)
        out["noise_for_target"] = dp.noise_for_epsilon(args.target_epsilon, args.sample_rate, args.rounds, args.delta)
        print(f"target {args.target_epsilon}: at most {out['max_rounds']} rounds at this noise, or noise multiplier "
              f">= {out['noise_for_target']:.3f} for {args.rounds} rounds")
    return 0


def _spans(args: argparse.Namespace) -> int:
    from fedcogen.client.cogen.public_gate import gate_path
    from fedcogen.dataset import load_federation, user_ids
    from fedcogen.simulations.evaluation.report import span_audit_markdown
    from fedcogen.simulations.privacy.span_audit import audit_adapter, heldout_tasks

    fed = load_federation(args.data)
    users = args.users.split(",") if args.users else user_ids(fed)[-args.last_users:]
    gate = gate_path(args.adapter)
    res = audit_adapter(fed, heldout_tasks(fed, users, args.tasks), device_model=args.device_model,
                        cloud_model=args.cloud_model, adapter=args.adapter, attacker_lm=args.attacker_lm,
                        gate_file=str(gate) if gate.is_file() else None, max_new_tokens=args.max_new_tokens,
                        gated_threshold=args.gated_threshold)
    table = "\n".join(span_audit_markdown(res)) + "\n"
    print(table)
    if args.report:
        Path(args.report).write_text("# Private-span audit\n\n" + table)
    _write(args.json, res, args)
    return 0 if res["protected_passes"] else 1


def _corpora(args: argparse.Namespace) -> int:
    import subprocess

    from fedcogen.client.cogen.span_detector import SpanDetector, load_span_detector
    from fedcogen.simulations.privacy.fact_audit import CORPORA
    from fedcogen.simulations.privacy.span_audit import (
        CorpusAuditConfig,
        corpus_audit_markdown,
        run_corpus_audit,
    )

    corpora = tuple(args.corpora.split(",")) if args.corpora else CORPORA
    detector = load_span_detector(args.private_spans) if args.private_spans else SpanDetector()
    cfg = CorpusAuditConfig(corpora=corpora, split=args.split, wire_items=args.wire_items, detector=detector)
    here = Path(__file__).resolve().parent
    try:  # the code that runs: taken before the run, with whether the work tree had uncommitted changes
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False,
                                cwd=here).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                    text=True, check=False, cwd=here).stdout.strip())
    except OSError:
        commit, dirty = None, None
    res = run_corpus_audit(cfg, wire=not args.no_wire)
    res = {"commit": commit, "uncommitted_changes": dirty, "command": "fedcogen privacy corpora " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in (("split", args.split), ("wire_items", args.wire_items))
        ) + (" --no-wire" if args.no_wire else ""), **res}
    table = "\n".join(corpus_audit_markdown(res)) + "\n"
    print(table)
    if args.report:
        Path(args.report).write_text("# Private-span corpora\n\n" + table)
    _write(args.json, res)
    return 0 if args.no_wire or res["protected_zero"] else 1


def _secagg(args: argparse.Namespace) -> int:
    from fedcogen.secagg import SecAggRunConfig

    if args.real_path:
        from fedcogen.simulations.privacy.secagg_real_path import REAL_PATH_RUN, compare_real_path, markdown

        n = args.num_clients
        res = compare_real_path(REAL_PATH_RUN.replace(num_clients=n, clients_per_round=n, rounds=args.rounds,
                                                      density=args.density), args.out)
        print(markdown(res))
        _write(args.json, res, args)
        return 0
    from fedcogen.simulations.privacy.secagg_experiment import adapter_flat, compare_modes

    dim = args.dim or int(adapter_flat(args.model).size)
    res = compare_modes(SecAggRunConfig(dim=dim).with_run(num_clients=args.num_clients, clients_per_round=args.num_clients,
                                                        rounds=args.rounds, density=args.density),
                        args.out)
    print((Path(args.out) / "secagg_compare.md").read_text())
    _write(args.json, res, args)
    return 0
