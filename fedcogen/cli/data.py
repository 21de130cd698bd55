"""`fedcogen data`: generate, inspect and validate the synthetic private writing federation."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedcogen import results_json
from fedcogen.cli.common import add_command, add_group, cli_settings
from fedcogen.dataset import (
    KIND_LABELS,
    SPLITS,
    TASK_KINDS,
    VARIETIES,
    DataValidationError,
    FederationConfig,
    find_leaks,
    generate_federation,
    load_federation,
    validate_task_file,
    variety_report,
    write_federation,
)
from fedcogen.provenance import provenance

GENERATE_HELP = """\
Generate a deterministic federation of N users (each a Flower client) with private profiles,
private past texts (training history, carrying each user's canaries), and writing tasks split into
train / val / test. Same seed -> byte-identical files.

Files written into --out:
  manifest.json          seed, config, counts per split/kind, sha256 of every file
  profiles.jsonl         private profiles (private_values lists every private value)
  history.jsonl          past texts (training only; the only place canaries appear)
  train/val/test.jsonl   tasks: instruction (public), private_context, reference, private_facts
  private/canaries.json  canaries per user + their format, for exposure experiments
"""


def register(sub: argparse._SubParsersAction) -> None:
    _, dsub = add_group(
        sub, "data", "generate / inspect / validate the synthetic private writing federation", dest="data_command",
        description="Synthetic CoGenesis-style personalised writing data: each user is a federated client "
        "whose private profile and history never leave the device; task instructions are safe to show "
        "the cloud.",
    )
    g = add_command(dsub, "generate", "write a new federation folder", description=GENERATE_HELP, func=_generate)
    g.add_argument("--out", required=True, type=Path, help="output folder (must be empty unless --force)")
    g.add_argument("--num-clients", "--users", dest="num_clients", type=int, default=16,
                   help="number of users / clients (default 16)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same bytes")
    g.add_argument("--history", type=int, default=24, help="past texts per user (default 24)")
    g.add_argument("--train-tasks", type=int, default=16, help="train tasks per user (default 16)")
    g.add_argument("--val-tasks", type=int, default=4, help="validation tasks per user (default 4)")
    g.add_argument("--test-tasks", type=int, default=4, help="test tasks per user (default 4)")
    g.add_argument("--canaries", type=int, default=2, help="canaries per user (default 2; 0 = none)")
    g.add_argument("--canary-repeats", type=int, default=1,
                   help="history texts carrying each canary (default 1; more = easier to memorise)")
    g.add_argument("--variety", choices=VARIETIES, default="basic",
                   help="basic (default: the 18 scenarios every earlier figure used) or rich (many task kinds, "
                   "profile formats, fact kinds and free-text histories; issue 26)")
    g.add_argument("--max-context-words", type=int, default=1400,
                   help="rich: longest private context in words (default 1400, ~2,000 tokens)")
    g.add_argument("--distractor-facts", type=int, default=4,
                   help="rich: up to this many facts the task does not need in each context (default 4; 0 = none)")
    g.add_argument("--absent-fact-percent", type=int, default=15,
                   help="rich: share of tasks whose context lacks one fact, answered without it (default 15)")
    g.add_argument("--no-format-variety", dest="format_variety", action="store_false",
                   help="rich: every profile as plain 'key: value' lines (ablation)")
    g.add_argument("--force", action="store_true", help="write into a non-empty folder, replacing our files")

    i = add_command(
        dsub, "inspect", "counts, sample tasks and validation status of a federation folder", func=_inspect,
        description="Validate a federation folder (sha256 of every file, fields, user ids, privacy "
        "invariants) and show counts per split and kind plus one sample task per kind.",
    )
    i.add_argument("folder", type=Path, help="folder written by `fedcogen data generate`")
    i.add_argument("--user", help="show this user's profile summary and samples only (e.g. user-03)")
    i.add_argument("--json", action="store_true", help="print a JSON summary instead of tables")

    v = add_command(
        dsub, "validate", "check a task JSONL file line by line (exit 1 if anything is wrong)", func=_validate,
        description="Check a task file (a generated split or a hand-written `fedcogen eval` file): every "
        "line must be a JSON object with string user_id, instruction, private_context, reference; "
        "optional private_facts must be a list of strings. User ids are checked against a "
        "profiles.jsonl next to the file (or --profiles). A folder is validated as a whole federation.",
    )
    v.add_argument("file", type=Path, help="task .jsonl file, or a federation folder")
    v.add_argument("--profiles", type=Path, help="profiles.jsonl whose user ids are the only valid ones")

    r = add_command(
        dsub, "variety", "distinct n-gram ratios and template reuse across users of federations", func=_variety,
        description="Measure how varied a federation's texts are (fedcogen.dataset.variety): distinct-1/2/3 of "
        "references, contexts, instructions and history; the share of reference sentences whose skeleton "
        "(private values masked) another user also wrote; task kinds, context layouts and context lengths. "
        "Without folders, generates one federation per --varieties entry with the same size and seed, so the "
        "figures compare like with like.",
    )
    r.add_argument("folders", nargs="*", type=Path, help="federation folders to measure (default: generate)")
    r.add_argument("--varieties", default="basic,rich", help="generator varieties to compare (default basic,rich)")
    r.add_argument("--users", type=int, default=12, help="users per generated federation (default 12)")
    r.add_argument("--seed", type=int, default=0, help="seed of the generated federations (default 0)")
    r.add_argument("--json", dest="json_out", type=Path, help="write the figures (with a provenance record) here")


def _generate(args: argparse.Namespace) -> int:
    from rich.console import Console


    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise ValueError(f"output folder {out} is not empty (use --force to overwrite)")
    cfg = FederationConfig(
        n_users=args.num_clients, seed=args.seed, history_per_user=args.history,
        train_tasks_per_user=args.train_tasks, val_tasks_per_user=args.val_tasks,
        test_tasks_per_user=args.test_tasks, canaries_per_user=args.canaries,
        canary_repeats=args.canary_repeats, variety=args.variety, max_context_words=args.max_context_words,
        distractor_facts=args.distractor_facts, absent_fact_percent=args.absent_fact_percent,
        format_variety=args.format_variety,
    )
    fed = generate_federation(cfg, progress=True)
    leaks = find_leaks(fed)
    if leaks:  # never write data that breaks its own privacy promise
        raise ValueError(f"generated data violates a privacy invariant: {leaks[0]}")
    folder = write_federation(fed, out)
    console = Console()
    counts = {"history": [h.kind for h in fed.history]} | {sp: [t.task_type for t in fed.tasks[sp]] for sp in SPLITS}
    console.print(kind_table(f"federation: {cfg.n_users} users, seed {cfg.seed}", kinds_of(fed),
                             {name: {k: items.count(k) for k in kinds_of(fed)} | {"total": len(items)}
                              for name, items in counts.items()}))
    n_can = sum(len(v) for v in fed.canaries.values())
    print(f"canaries: {n_can} ({cfg.canaries_per_user} per user, each in {cfg.canary_repeats} training text(s))")
    print("privacy check: no private value in any instruction; canaries only in their owner's history")
    print(f"written to {folder.resolve()} (manifest.json lists every file with its sha256)")
    return 0


def kind_table(title: str, kinds: list[str], counts: dict[str, dict[str, int]]):  # noqa: ANN201 - a rich Table
    """Counts per kind and split: kinds as columns for the basic four, as rows for the rich federation's many."""
    from rich.table import Table

    splits = ["history", *SPLITS]
    table = Table(title=title)
    if len(kinds) <= 6:
        table.add_column("split")
        for k in kinds:
            table.add_column(k, justify="right")
        table.add_column("total", justify="right")
        for sp in splits:
            table.add_row(sp, *[str(counts[sp][k]) for k in kinds], str(counts[sp]["total"]))
        return table
    table.add_column("kind")
    for sp in splits:
        table.add_column(sp, justify="right")
    for k in [*kinds, "total"]:
        table.add_row(k, *[str(counts[sp][k]) for sp in splits])
    return table


def kinds_of(fed) -> list[str]:
    """The task kinds a federation has: the basic four, or every kind the rich generator wrote."""
    present = {h.kind for h in fed.history} | {t.task_type for s in SPLITS for t in fed.tasks[s]}
    return list(TASK_KINDS) if present <= set(TASK_KINDS) else [k for k in KIND_LABELS if k in present]


def _summary(fed, user: str | None) -> dict:
    shown = kinds_of(fed)

    def count(items):
        items = list(items)
        return {k: items.count(k) for k in shown} | {"total": len(items)}

    hist = [h for h in fed.history if user is None or h.user_id == user]
    tasks = {s: [t for t in fed.tasks[s] if user is None or t.user_id == user] for s in SPLITS}
    samples = {}
    for k in shown:
        for s in SPLITS:
            hit = next((t for t in tasks[s] if t.task_type == k), None)
            if hit:
                samples[k] = hit.to_json()
                break
    out = {
        "users": len(fed.profiles) if user is None else 1,
        "seed": fed.config.seed,
        "counts": {"history": count(h.kind for h in hist)}
        | {s: count(t.task_type for t in tasks[s]) for s in SPLITS},
        "canaries": sum(len(v) for u, v in fed.canaries.items() if user is None or u == user),
        "samples": samples,
    }
    if user is not None:
        p = fed.profile(user)
        out["profile"] = {"name": p.name, "city": p.city, "employer": p.employer, "role": p.role,
                          "formality": p.style["formality"], "length": p.style["length"],
                          "kind_mix": p.kind_mix, "private_values": len(p.private_values)}
    return out


def _inspect(args: argparse.Namespace) -> int:
    from rich.console import Console


    try:
        fed = load_federation(args.folder)
    except DataValidationError as exc:
        print(f"validation: FAILED: {exc}")
        return 1
    if args.user is not None:
        fed.profile(args.user)  # ValueError naming the known ids
    leaks = find_leaks(fed)
    summary = _summary(fed, args.user)
    summary["validation"] = "ok" if not leaks else "privacy invariant broken"
    summary["leaks"] = leaks
    if args.json:
        print(json.dumps(summary, indent=1, sort_keys=True, ensure_ascii=False))
        return 1 if leaks else 0
    console = Console()
    who = f"user {args.user}" if args.user else f"{summary['users']} users"
    shown = [k for k in summary["counts"]["history"] if k != "total"]
    console.print(kind_table(f"{args.folder}: {who}, seed {summary['seed']}", shown, summary["counts"]))
    if "profile" in summary:
        for key, val in summary["profile"].items():
            print(f"  {key:<15} {val}")
    for kind, t in summary["samples"].items():
        print(f"\n--- sample {kind} ({t['task_id']})")
        print(f"instruction (public): {t['instruction']}")
        print("private context:\n  " + t["private_context"].replace("\n", "\n  "))
        print("reference:\n  " + t["reference"].replace("\n", "\n  "))
        print(f"private facts: {t['private_facts']}")
    print(f"\ncanaries: {summary['canaries']} (private/canaries.json)")
    if leaks:
        print(f"validation: files OK, but {len(leaks)} privacy problem(s):")
        for line in leaks[:20]:
            print(f"  {line}")
        return 1
    print("validation: OK (sha256, fields and user ids of every file; no private value in any instruction)")
    return 0


def _variety(args: argparse.Namespace) -> int:
    if args.folders:
        reports = {str(f): variety_report(load_federation(f)) for f in args.folders}
    else:
        names = [v.strip() for v in args.varieties.split(",") if v.strip()]
        bad = [v for v in names if v not in VARIETIES]
        if bad or not names:
            raise ValueError(f"--varieties: unknown {', '.join(bad) or '(empty)'}; choose from {', '.join(VARIETIES)}")
        reports = {v: variety_report(generate_federation(FederationConfig(n_users=args.users, seed=args.seed,
                                                                          variety=v))) for v in names}
    for name, rep in reports.items():
        d, t = rep["distinct_n"], rep["template_reuse"]
        print(f"{name}: {rep['users']} users, {rep['tasks']} tasks, {rep['task_kinds']} task kinds, "
              f"{rep['context_layouts']} context layouts; references distinct-2/3 "
              f"{d['references']['distinct_2']:.3f}/{d['references']['distinct_3']:.3f}; contexts distinct-3 "
              f"{d['contexts']['distinct_3']:.3f}; sentence skeletons shared across users "
              f"{t['sentence_skeletons_shared_across_users']:.3f} ({t['distinct_sentence_skeletons']} distinct); "
              f"context words mean {rep['context_words']['mean']}, max {rep['context_words']['max']}")
    if args.json_out:
        doc = {"reports": reports, "provenance": provenance(settings=cli_settings(args), seeds={"seed": args.seed})}
        results_json.write(args.json_out, doc, indent=1)
        print(f"wrote {args.json_out}")
    return 0


def _validate(args: argparse.Namespace) -> int:

    target: Path = args.file
    if target.is_dir():
        try:
            fed = load_federation(target)
        except DataValidationError as exc:
            print(f"{exc}")
            return 1
        total = sum(len(v) for v in fed.tasks.values())
        print(f"{target}: OK ({len(fed.profiles)} users, {len(fed.history)} history texts, {total} tasks)")
        return 0
    known = None
    if args.profiles is not None:
        if not args.profiles.is_file():
            raise FileNotFoundError(f"--profiles file not found: {args.profiles}")
        known = set()
        for n, line in enumerate(args.profiles.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    known.add(str(json.loads(line)["user_id"]))
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise ValueError(f"{args.profiles.name}:{n}: field 'user_id': missing or invalid JSON") from None
    records, problems = validate_task_file(target, strict=False, known_users=known)
    for line, fld, reason in problems:
        where = f"{target.name}:{line}" if line else target.name
        print(f"{where}: field '{fld}': {reason}")
    if problems:
        print(f"{target}: {len(problems)} problem(s); {len(records)} valid record(s)")
        return 1
    print(f"{target}: OK ({len(records)} records)")
    return 0
