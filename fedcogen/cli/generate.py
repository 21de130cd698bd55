"""``fedcogen generate``: write a user's texts with a CoGenesis variant against a running cloud.

An answer that fell back to the device alone (cloud unreachable, refused, timed out) is not the variant's:
by default generation stops there and the command exits 1 with the cause as its last lines (its text is
not printed under the variant's name); ``--allow-fallback`` keeps such answers, labelled as fallbacks.
"""

from __future__ import annotations

import argparse
import sys
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
from fedcogen.dataset.validate import FieldLimits, check_sizes, jsonl_file_lines
from fedcogen.provenance import provenance
from fedcogen.variants import VARIANTS

TASK_FILE_ORDER = ("test.jsonl", "val.jsonl", "train.jsonl")


def load_tasks(data: str, user: str, task: str | None = None, limits: FieldLimits | None = None,
               ) -> list[dict[str, Any]]:
    """Task records of ``user`` (optionally one ``task``) from a JSONL file or a federation folder.

    Records need ``user_id``, ``instruction`` and ``private_context`` (the ``fedcogen eval`` format).
    A folder is searched for test.jsonl, then val.jsonl, then train.jsonl. Any invalid line (not JSON, not
    UTF-8, a field missing or over its size limit) is an error naming file, line and field.
    """
    limits = limits or FieldLimits()
    path = Path(data).expanduser()
    if path.is_dir():
        files = [path / f for f in TASK_FILE_ORDER if (path / f).is_file()]
        if not files:
            raise FileNotFoundError(f"{path} has none of {', '.join(TASK_FILE_ORDER)}")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"data not found: {path}")
    out: list[dict[str, Any]] = []
    for f in files:
        for lineno, rec, error in jsonl_file_lines(f):
            if error:
                raise ValueError(f"{f}:{lineno}: {error}")
            if not isinstance(rec, dict):
                raise ValueError(f"{f}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            for key in ("user_id", "instruction", "private_context"):
                if key not in rec:
                    raise ValueError(f"{f}:{lineno}: field '{key}': missing")
            for fld, reason in check_sizes(rec, limits):
                raise ValueError(f"{f}:{lineno}: field '{fld}': {reason}")
            if rec["user_id"] != user:
                continue
            if task is not None and rec.get("task_id") != task:
                continue
            out.append(rec)
        if out:
            break
    if not out:
        what = f"task '{task}' of user '{user}'" if task else f"tasks of user '{user}'"
        raise ValueError(f"no {what} in {', '.join(str(f) for f in files)}")
    return out


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "generate", "generate a user's texts with a CoGenesis variant (device, cloud, sketch, logit, gated, "
        "draft_edit)",
        func=_generate,
        description=(
            "Device-side CoGenesis generation. The private context stays on this machine: 'sketch' sends "
            "only the instruction; 'logit' and 'gated' also send the tokens generated so far (never the "
            "context); 'draft_edit' sends only the instruction (the cloud drafts, the device edits with the "
            "context; nothing it writes is sent); 'device' uses no cloud; 'cloud' is the cloud alone on the instruction; "
            "'cloud_with_context' is a privacy-VIOLATING evaluation upper bound (the server must allow it)."
        ),
        formatter=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--variant", choices=VARIANTS, default="logit", help="collaboration variant")
    p.add_argument("--data", required=True, help="task JSONL file or federation folder (test/val/train.jsonl)")
    p.add_argument("--user", required=True, help="user_id whose tasks to generate")
    p.add_argument("--task", help="one task_id (default: all of the user's tasks in the file)")
    p.add_argument("--limit", type=int, default=0, help="at most this many tasks (0 = all)")
    add_size_limit_args(p)
    p.add_argument("--cloud", help="cloud address HOST:PORT (not needed for --variant device)")
    p.add_argument("--tls-dir", help="folder with ca.crt to verify the cloud")
    add_token_args(p)
    p.add_argument("--insecure", action="store_true", help="plaintext connection (testing only)")
    p.add_argument("--adapter", help="personalised LoRA adapter (PEFT folder, or weights file beside adapter_config.json)")
    p.add_argument("--device-model", default=DEVICE_MODEL, help="device model name or local folder")
    add_device_flag(p, "the device model")
    add_decoding_args(p)
    # defaults mirror DeviceConfig (tests/client/cogen/test_speculative.py checks they stay equal)
    p.add_argument("--k", type=int, default=32, help="top-k size of the cloud's distributions (packed8: the most)")
    p.add_argument("--encoding", choices=("packed8", "fp16", "int8", "fp32", "full"), default="packed8",
                   help="value encoding (packed8: uint16 ids + uint8 codes, k adapting to the cloud's spread)")
    p.add_argument("--draft-tokens", type=int, default=8,
                   help="logit: speculative rounds of up to this many device-drafted tokens (0 = one round trip per token)")
    p.add_argument("--draft-min-p", type=float, default=0.5,
                   help="logit: draft only tokens the device gives at least this probability")
    p.add_argument("--weight", default="0.5", help="device weight w in [0,1], or 'learned' (needs --gate)")
    p.add_argument("--gate", help="learned fusion gate state dict (FusionGate.save)")
    p.add_argument("--gated-metric", choices=("entropy", "margin"), default="entropy",
                   help="gated: the device's uncertainty measure")
    p.add_argument("--gated-threshold", type=float, default=5.0,
                   help="gated: entropy (nats) above which / top-2 margin below which the device asks the cloud "
                   "(calibrate with `fedcogen gate calibrate`)")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--step-timeout", type=float, default=20.0, help="deadline per cloud step (s)")
    p.add_argument("--allow-fallback", action="store_true",
                   help="when the cloud fails, keep the device-alone answer, labelled as a fallback (default: stop "
                   "and exit 1 with the cause)")
    p.add_argument("--out", help="write results as JSON here (and a .md next to it)")


def _generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fedcogen.client.cogen.cogen_device import CogenDevice, DeviceConfig

    if args.variant != "device" and not args.cloud:
        raise ValueError(f"--variant {args.variant} needs --cloud HOST:PORT")
    if args.cloud and not args.insecure and not args.tls_dir:
        raise ValueError("give --tls-dir DIR (with --token) to reach the cloud, or --insecure for plaintext tests")
    learned = args.weight == "learned"
    if learned and not args.gate:
        raise ValueError("--weight learned needs --gate PATH")
    try:
        weight = 0.5 if learned else float(args.weight)
    except ValueError:
        raise ValueError(f"--weight must be a number in [0, 1] or 'learned', got {args.weight!r}") from None
    tasks = load_tasks(args.data, args.user, args.task, FieldLimits.from_specs(args.max_chars))
    if args.limit:
        tasks = tasks[: args.limit]
    config = DeviceConfig(
        device_model=args.device_model,
        device=args.device,
        seed=args.seed,
        adapter=args.adapter,
        cloud=args.cloud,
        tls_dir=args.tls_dir,
        token=token_of(args),
        insecure=args.insecure,
        k=args.k,
        encoding=args.encoding,
        weight=weight,
        gate_path=args.gate if learned else None,
        **decoding_settings(args),
        sample=args.sample,
        gated_metric=args.gated_metric,
        gated_threshold=args.gated_threshold,
        draft_tokens=args.draft_tokens,
        draft_min_p=args.draft_min_p,
        step_timeout_s=args.step_timeout,
    )
    device = CogenDevice(config)
    rows = []
    refused: dict[str, Any] | None = None  # the first answer that fell back, without --allow-fallback
    try:
        for rec in tqdm(tasks, desc=f"generate [{args.variant}]", file=sys.stderr, disable=len(tasks) < 2):
            result = device.generate(rec["instruction"], rec["private_context"], args.variant)
            row = {"user_id": rec["user_id"], "task_id": rec.get("task_id", ""), **result.to_dict()}
            rows.append(row)
            for w in result.warnings:
                print(f"warning: {w}", file=sys.stderr)
            name = row["task_id"] or rec["instruction"][:40]
            if result.fell_back and not args.allow_fallback:
                refused = row
                break  # the next tasks would meet the same cloud
            label = f"{args.variant} FELL BACK: device alone" if result.fell_back else args.variant
            print(f"--- {name} [{label}]")
            print(result.text)
    finally:
        device.close()
    summary = {
        "variant": args.variant,
        "tasks": len(rows),
        "tokens": sum(r["tokens"] for r in rows),
        "mean_tokens_per_s": sum(r["tokens_per_s"] for r in rows) / max(1, len(rows)),
        "bytes_sent": sum(r["bytes_sent"] for r in rows),
        "bytes_received": sum(r["bytes_received"] for r in rows),
        "fell_back": sum(1 for r in rows if r["fell_back"]),
    }
    print(results_json.dumps(summary, indent=None), file=sys.stderr)
    if args.out:
        out = results_json.write(args.out, {"summary": summary, "results": rows, "provenance": provenance(
            settings=cli_settings(args), seeds={"seed": args.seed})}, indent=2)
        md = [f"# fedcogen generate ({args.variant})", "", "| task | tokens | tok/s | cloud calls | sent B | recv B | fell back |",
              "|---|---|---|---|---|---|---|"]
        md += [
            f"| {r['task_id']} | {r['tokens']} | {r['tokens_per_s']:.1f} | {r['cloud_calls']} | {r['bytes_sent']} "
            f"| {r['bytes_received']} | {r['fell_back']} |"
            for r in rows
        ]
        out.with_suffix(".md").write_text("\n".join(md) + "\n")
    if refused is not None:
        reason = refused["warnings"][-1] if refused["warnings"] else "the cloud did not answer"
        print(f"error: task {refused['task_id'] or '?'}: --variant {args.variant} fell back to the device alone, "
              f"so no {args.variant} answer was produced (the device-alone text is not shown as one)\n"
              f"  cause: {reason}\n"
              f"  check --cloud {args.cloud}; pass --allow-fallback to keep device-alone answers, labelled as "
              f"fallbacks", file=sys.stderr)
        return 1
    return 0
