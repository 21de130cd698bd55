"""`fedcogen eval`: run CoGenesis variants over a task file, score them, write JSON + markdown report.

Input validation is delegated to :mod:`fedcogen.dataset` (one validator for the whole
project); this module decides what to do with invalid lines (``--on-invalid skip`` or ``reject``).
Generation is delegated to the device-side CoGenesis generator; scoring and aggregation to
:mod:`fedcogen.simulations.evaluation.evaluate`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedcogen import results_json
from fedcogen.cli.common import (
    DEVICE_MODEL,
    add_command,
    add_decoding_args,
    add_size_limit_args,
    add_token_args,
    cli_settings,
    decoding_settings,
    token_of,
)
from fedcogen.cli.flags import add_device_flag
from fedcogen.dataset import names_and_places
from fedcogen.dataset.validate import FieldLimits, jsonl_file_lines
from fedcogen.models import check_model_pair
from fedcogen.provenance import provenance
from fedcogen.variants import (
    CLOUD_VARIANTS,
    COLLABORATIVE_VARIANTS,
    DEFAULT_EVAL_VARIANTS,
    EVAL_ONLY_VARIANT,
    PERSONALISED_VARIANT,
    VARIANTS,
)

DEFAULT_VARIANTS = ",".join(DEFAULT_EVAL_VARIANTS)
EXIT_OK, EXIT_GENERATION_FAILED, EXIT_INVALID = 0, 1, 2

EPILOG = """\
dataset format (JSONL, one task a line):
  user_id, instruction (what the cloud may see), private_context, reference (target answer),
  optional private_facts (list of strings that must not leak), optional task_type, optional task_id.
  Style markers come from --profiles (default: profiles.jsonl next to the dataset, if present).

variants:
  device              device model alone, with the private context (no network)
  device_personalised device model + federated LoRA adapter (needs --adapter)
  cloud               cloud model alone on the bare instruction (no private context)
  sketch              cloud writes an outline from the instruction, device writes the answer
  logit               device and cloud logits fused token by token (cloud sees committed tokens)
  gated               logit fusion only where the device is unsure
  draft_edit          cloud drafts from the instruction, the device keeps the draft tokens it finds likely
                      (--draft-edit-tau) and rewrites the rest; nothing the device writes is sent
  cloud_with_context  EVALUATION-ONLY upper bound: the cloud gets the private context

metrics (per variant; mean per user, then over users, 95% bootstrap CI resampling users):
  ROUGE-L F1, private-fact recall, style match (needs profiles), leaked facts (private facts
  found in the bytes the cloud received), bytes sent/received, tokens/s, latency, cloud-call
  fraction, draft kept and device passes per token (draft_edit), foreign facts (names / places of other users or of the data generator's pools in the
  answer that its own context lacks: invented, not read); plus paired per-user differences.

fallbacks: a cloud variant whose cloud was unreachable, refused or timed out ends on the device
alone. Such an answer is not the variant's: by default it is a failed generation (exit 1, the
cause on the last lines); with --allow-fallback it is kept, marked "fell_back" in its row, left out
of the variant's means and counted in the summary's "fell back" column.

exit codes: 0 ok; 1 results written but some generations failed or fell back (without
--allow-fallback); 2 invalid input or arguments (with --on-invalid reject, any invalid line).

examples:
  fedcogen eval --dataset runs/fed/tasks.jsonl --spawn-cloud --json runs/eval.json --report runs/eval.md
  fedcogen eval --dataset tasks.jsonl --variants device,logit --cloud 127.0.0.1:50051 --json out.json
  fedcogen eval --dataset simulations/evaluation/foreign_sets/cogenesis.jsonl \
      --dataset simulations/evaluation/foreign_sets/threads.jsonl --variants device,device_personalised \
      --adapter runs/demo/federation/adapter --max-tasks-per-user 1 --json runs/foreign.json
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "eval", "evaluate CoGenesis variants on a task file (quality, privacy leakage, cost, with CIs)",
        func=run_eval,
        description="Run generation variants over every task of a JSONL dataset, score quality, "
        "personalisation, leakage on the wire and cost, and write per-task / per-user / overall "
        "results as JSON (and a markdown report with plots).",
        epilog=EPILOG,
    )
    p.add_argument("--dataset", required=True, type=Path, action="append",
                   help="task file (JSONL, format below); repeat it to evaluate several sets in one run, each "
                   "reported on its own users (\"sets\" in the JSON, one table per set in the report), e.g. the "
                   "foreign-format sets in simulations/evaluation/foreign_sets/")
    p.add_argument("--variants", default=DEFAULT_VARIANTS,
                   help=f"comma-separated variants to run (default: {DEFAULT_VARIANTS})")
    cloud = p.add_mutually_exclusive_group()
    cloud.add_argument("--cloud", metavar="HOST:PORT", help="address of a running `fedcogen cloud serve`")
    cloud.add_argument("--spawn-cloud", action="store_true",
                       help="start `fedcogen cloud serve --insecure` on a free loopback port for this run "
                       "and stop it afterwards (also on failure)")
    p.add_argument("--allow-fallback", action="store_true",
                   help="keep answers that fell back to the device alone when the cloud failed: reported per row "
                   "and in the summary, left out of the variant's means (default: a fallback is a failed "
                   "generation, exit 1)")
    p.add_argument("--cloud-start-timeout", type=float, default=300.0,
                   help="seconds --spawn-cloud waits for the cloud to report SERVING (default 300)")
    p.add_argument("--tls-dir", help="with --cloud: folder with ca.crt to verify the cloud (see `fedcogen certs`)")
    add_token_args(p)
    p.add_argument("--insecure", action="store_true",
                   help="with --cloud: plaintext connection (loopback/testing only; --spawn-cloud implies it)")
    p.add_argument("--device-model", default=DEVICE_MODEL, help="device model name or local HF dir")
    p.add_argument("--cloud-model", default="smollm2", help="cloud model for --spawn-cloud")
    add_device_flag(p, "the device model (and a --spawn-cloud cloud)")
    p.add_argument("--adapter", type=Path, help="federated LoRA adapter dir (enables device_personalised)")
    p.add_argument("--profiles", type=Path, help="profiles.jsonl with style markers "
                   "(default: profiles.jsonl next to the dataset if it exists)")
    p.add_argument("--max-tasks", type=int, help="evaluate only the first N valid tasks of each dataset")
    p.add_argument("--max-tasks-per-user", type=int,
                   help="evaluate at most K tasks of each user (first ones; applied before --max-tasks): more users "
                   "for the same time gives tighter per-user intervals")
    p.add_argument("--foreign-terms", type=Path,
                   help="extra names / places (one a line) counted as foreign facts when an answer has one its own "
                   "context lacks; always counted: the generator's name and place pools and every task's "
                   "capitalised private facts")
    add_decoding_args(p)
    p.add_argument("--batch-size", type=int, default=8, help="answers decoded in lockstep (faster on CPU)")
    p.add_argument("--on-invalid", choices=("skip", "reject"), default="skip",
                   help="invalid dataset lines (bad JSON, not UTF-8, missing or oversized fields): report and "
                   "skip them (default) or reject the run (exit 2)")
    add_size_limit_args(p)
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of users (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed for the bootstrap and the device model (tiny models)")
    p.add_argument("--json", dest="json_out", required=True, type=Path, help="where to write results JSON")
    p.add_argument("--report", type=Path, help="markdown report path; plots are written next to it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


# --------------------------------------------------------------------------------------------
# input


def parse_variants(spec: str, *, adapter: Path | None) -> list[str]:
    """Split and check ``--variants``; unknown names and a personalised variant without adapter fail."""
    names = [v.strip() for v in spec.split(",") if v.strip()]
    known = (*VARIANTS, PERSONALISED_VARIANT)
    unknown = [v for v in names if v not in known]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    if not names:
        raise ValueError("--variants is empty")
    if len(set(names)) != len(names):
        raise ValueError(f"--variants lists a variant twice: {spec}")
    if PERSONALISED_VARIANT in names and adapter is None:
        raise ValueError(f"variant {PERSONALISED_VARIANT} needs --adapter DIR (the federated LoRA adapter)")
    if adapter is not None and not adapter.is_dir():
        raise FileNotFoundError(f"--adapter {adapter} is not a directory")
    return names


def format_problem(path: Path, problem: Any) -> str:
    """``file:line: field 'name': reason``, the same shape as the validator's own error message."""
    if isinstance(problem, tuple | list) and len(problem) == 3:
        line, fld, reason = problem
        where = f"{path.name}:{line}" if line else path.name
        return f"{where}: field '{fld}': {reason}" if fld and fld != "-" else f"{where}: {reason}"
    return str(problem)


def load_tasks(path: Path, on_invalid: str, limits: FieldLimits | None = None) -> tuple[list[Any], list[str]]:
    """Validate the dataset with the project validator; return (valid tasks, problem lines).

    ``reject`` collects every problem first (so the user can fix them all at once), then raises.
    """
    from fedcogen.dataset import validate_task_file

    if not path.is_file():
        raise FileNotFoundError(f"dataset {path} does not exist")
    records, raw_problems = validate_task_file(path, strict=False, limits=limits)
    problems = [format_problem(path, p) for p in raw_problems]
    if problems and on_invalid == "reject":
        shown = "\n  ".join(problems[:20]) + ("" if len(problems) <= 20 else f"\n  ... {len(problems) - 20} more")
        raise ValueError(f"{len(problems)} invalid line(s) in {path}, run rejected (--on-invalid reject):\n  "
                         f"{shown}")
    for problem in problems:
        print(f"skipping invalid line: {problem}", file=sys.stderr)
    return list(records), problems


def cap_tasks(tasks: Sequence[Any], max_tasks: int | None, per_user: int | None) -> list[Any]:
    """At most ``per_user`` tasks of each user (first ones), then the first ``max_tasks`` of those."""
    out, seen = [], {}
    for t in tasks:
        n = seen.get(str(t.user_id), 0)
        if per_user is None or n < per_user:
            out.append(t)
            seen[str(t.user_id)] = n + 1
    return out[:max_tasks] if max_tasks else out


def set_names(paths: Sequence[Path]) -> list[str]:
    """A name per dataset: its file stem, or parent/stem where two files share a stem."""
    stems = [p.stem for p in paths]
    names = [f"{p.parent.name}/{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]
    if len(set(names)) != len(names):
        raise ValueError(f"--dataset names a file twice: {', '.join(str(p) for p in paths)}")
    return names


def read_terms(path: Path | None) -> list[str]:
    """Names / places from a file, one a line (blank lines and # comments skipped)."""
    if path is None:
        return []
    if not path.is_file():
        raise FileNotFoundError(f"--foreign-terms {path} does not exist")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def load_profiles(path: Path | None, dataset: Path) -> tuple[dict[str, Any], str | None]:
    """user id -> StyleMarkers from a profiles JSONL; (markers, the file used or None)."""
    from fedcogen.simulations.evaluation.metrics import StyleMarkers

    if path is None:
        candidate = dataset.with_name("profiles.jsonl")
        if not candidate.is_file():
            return {}, None
        path = candidate
    if not path.is_file():
        raise FileNotFoundError(f"--profiles {path} does not exist")
    out: dict[str, StyleMarkers] = {}
    for lineno, row, error in jsonl_file_lines(path):
        if error:
            raise ValueError(f"{path}:{lineno}: {error} in profile")
        if not isinstance(row, dict) or not isinstance(row.get("user_id"), str | int):
            raise ValueError(f"{path}:{lineno}: field 'user_id' missing in profile")
        out[str(row["user_id"])] = StyleMarkers.from_profile(row)
    return out, str(path)


# --------------------------------------------------------------------------------------------
# generator


def personalised_needed(variants: Sequence[str], adapter: Path | None) -> bool:
    """Load the personalised device (base + adapter) for ``device_personalised`` and, when an adapter is given, for
    the collaboration variants, which run on it. Without the second part ``--variants draft_edit --adapter DIR``
    (no device_personalised in the list) silently decoded on the base device."""
    if PERSONALISED_VARIANT in variants:
        return True
    return adapter is not None and any(v in COLLABORATIVE_VARIANTS for v in variants)


def build_generator(args: argparse.Namespace, cloud_address: str | None, variants: Sequence[str]) -> Any:
    """The real device-side CoGenesis generator (``fedcogen.client.cogen.cogen_device``) behind the protocol."""
    from fedcogen.simulations.evaluation.cogen_generator import CogenGenerator

    return CogenGenerator.create(
        device_model=args.device_model,
        cloud_address=cloud_address,
        adapter=str(args.adapter) if args.adapter else None,
        insecure=bool(args.insecure or args.spawn_cloud),
        tls_dir=args.tls_dir,
        token=token_of(args),
        seed=args.seed,
        personalised=personalised_needed(variants, args.adapter),
        device=args.device,
        **decoding_settings(args),
    )


# --------------------------------------------------------------------------------------------
# handler


def run_eval(args: argparse.Namespace) -> int:
    from fedcogen.simulations.evaluation.evaluate import EvalConfig, evaluate, group_summaries
    from fedcogen.simulations.evaluation.report import write_report
    from fedcogen.simulations.federation.processes import spawned_cloud

    variants = parse_variants(args.variants, adapter=args.adapter)
    if args.max_tasks is not None and args.max_tasks < 1:
        raise ValueError(f"--max-tasks must be >= 1, got {args.max_tasks}")
    if args.resamples < 1:
        raise ValueError(f"--resamples must be >= 1, got {args.resamples}")
    needs_cloud = sorted(set(variants) & CLOUD_VARIANTS)
    if needs_cloud and not (args.cloud or args.spawn_cloud):
        raise ValueError(f"variant(s) {', '.join(needs_cloud)} need a cloud: pass --cloud HOST:PORT or --spawn-cloud")
    if args.cloud and not (args.insecure or args.tls_dir):
        raise ValueError("--cloud needs --tls-dir DIR (with --token) or an explicit --insecure for plaintext")
    if args.max_tasks_per_user is not None and args.max_tasks_per_user < 1:
        raise ValueError(f"--max-tasks-per-user must be >= 1, got {args.max_tasks_per_user}")
    datasets: list[Path] = list(args.dataset)
    names = set_names(datasets)
    foreign_terms = [*names_and_places(), *read_terms(args.foreign_terms)]
    tasks, problems, groups, profiles, profile_files = [], [], {}, {}, []
    for name, path in zip(names, datasets, strict=True):
        set_tasks, set_problems = load_tasks(path, args.on_invalid, FieldLimits.from_specs(args.max_chars))
        if not set_tasks:
            raise ValueError(f"no valid tasks in {path} ({len(set_problems)} invalid line(s))")
        set_tasks = cap_tasks(set_tasks, args.max_tasks, args.max_tasks_per_user)
        users = {str(t.user_id) for t in set_tasks}
        clash = sorted(users & {u for g in groups.values() for u in g})
        if clash:  # every set is reported on its own users: a user id must belong to one set
            raise ValueError(f"user id {clash[0]} is in {path} and in an earlier --dataset: user ids must differ "
                             "between sets")
        groups[name] = users
        tasks += set_tasks
        problems += set_problems
        set_profiles, set_profiles_file = load_profiles(args.profiles, path)
        profiles.update(set_profiles)
        if set_profiles_file and set_profiles_file not in profile_files:
            profile_files.append(set_profiles_file)
    profiles_file = ", ".join(profile_files) or None
    if needs_cloud and args.spawn_cloud:
        check_model_pair(args.device_model, args.cloud_model)  # a mismatched pair fails before any model loads

    with contextlib.ExitStack() as stack:
        address, cloud = args.cloud, None
        if needs_cloud and args.spawn_cloud:
            log_path = args.json_out.with_suffix(".cloud.log")
            log_path.parent.mkdir(parents=True, exist_ok=True)
            cloud = stack.enter_context(spawned_cloud(
                args.cloud_model, log_path=log_path, timeout_s=args.cloud_start_timeout, wait=False,
                allow_eval_only_context=EVAL_ONLY_VARIANT in variants, serve_args=["--device", args.device],
            ))
            address = cloud.address
        # the device model loads while the spawned cloud loads its own
        generator = build_generator(args, address if needs_cloud else None, variants)
        if hasattr(generator, "close"):
            stack.callback(generator.close)
        if cloud is not None:
            cloud.wait_ready()
        cfg = EvalConfig(resamples=args.resamples, seed=args.seed, progress=not args.no_progress,
                         batch_size=args.batch_size, allow_fallback=args.allow_fallback)
        result = evaluate(tasks, generator, variants, profiles=profiles, config=cfg, foreign_terms=foreign_terms)

    data = result.to_dict()
    data["sets"] = group_summaries(data, groups, variants, cfg)
    for name, path in zip(names, datasets, strict=True):
        data["sets"][name]["dataset"] = str(path)
    set_of = {u: name for name, users in groups.items() for u in users}
    for row in data["rows"]:
        row["set"] = set_of.get(str(row["user_id"]))
    data["meta"].update({
        "dataset": ", ".join(str(p) for p in datasets),
        "profiles": profiles_file,
        "device_model": args.device_model,
        "cloud": args.cloud or (f"spawned {args.cloud_model}" if args.spawn_cloud else None),
        "adapter": str(args.adapter) if args.adapter else None,
        "invalid_lines": len(problems),
    })
    data["invalid_lines"] = problems
    data["provenance"] = provenance(settings=cli_settings(args), seeds={"seed": args.seed})
    results_json.write(args.json_out, data, indent=2)
    print(f"wrote {args.json_out}")
    if args.report:
        print(f"wrote {write_report(data, args.report)}")
    _print_summary(data)
    causes = failure_lines(data["rows"], allow_fallback=args.allow_fallback)
    if causes:
        sys.stdout.flush()
        print("\n".join(causes), file=sys.stderr)
        return EXIT_GENERATION_FAILED
    return EXIT_OK


def failure_lines(rows: Sequence[dict[str, Any]], *, allow_fallback: bool) -> list[str]:
    """The cause of a failed run, as the last lines on screen; empty when every generation ran as asked
    (answers that fell back count as asked only with --allow-fallback)."""
    failed = [r for r in rows if "error" in r]
    if not failed:
        return []
    fell = [r for r in failed if r.get("fell_back")]
    other = [r for r in failed if not r.get("fell_back")]
    lines = [f"error: {len(failed)} of {len(rows)} generations failed (did not run as the variant asked); the "
             "results file has them as failed rows, left out of the means"]
    if fell:
        variants = ", ".join(dict.fromkeys(r["variant"] for r in fell))
        lines.append(f"  {len(fell)} fell back to the device alone ({variants}): {fell[0]['fallback_reason']}")
        if not allow_fallback:
            lines.append("  (check --cloud; pass --allow-fallback to keep such answers, reported as fallbacks)")
    if other:
        lines.append(f"  {len(other)} failed: {other[0]['error']}")
    return lines


def _print_summary(data: dict[str, Any]) -> None:
    """One line per variant: its means over the answers that ran as that variant, and how many did
    (``scored``), fell back to the device alone, or failed."""
    from fedcogen.simulations.evaluation.report import fmt_ci

    sets = data.get("sets") or {}
    groups = [("all tasks", data)] + (list(sets.items()) if len(sets) > 1 else [])
    for title, part in groups:
        if len(groups) > 1:
            print(f"== {title} ({len(part.get('users', [])) or data['meta'].get('users')} users)")
        print(f"{'variant':<20} {'ROUGE-L':>22} {'fact recall':>22} {'foreign':>8} {'leaked':>8} {'bytes':>10} "
              f"{'latency s':>10} {'scored':>7} {'fell back':>9} {'failed':>6}")
        for v in data["variants"]:
            o, c = part["overall"].get(v, {}), part["counts"][v]
            print(f"{v:<20} {fmt_ci(o.get('rouge_l'), 3):>22} {fmt_ci(o.get('fact_recall'), 3):>22} "
                  f"{fmt_ci(o.get('foreign_facts'), 2).split(' ')[0]:>8} "
                  f"{fmt_ci(o.get('leaked_facts'), 2).split(' ')[0]:>8} "
                  f"{fmt_ci(o.get('bytes_total'), 0).split(' ')[0]:>10} "
                  f"{fmt_ci(o.get('latency_s'), 2).split(' ')[0]:>10} {c['scored']:>7} {c['fell_back']:>9} "
                  f"{c['failed']:>6}")
    for note in data["notes"]:
        print(f"note: {note}")
