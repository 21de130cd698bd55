"""`fedcogen bench NAME`: the benchmarks (comm, cogen, fuzz, load, codec, scale, privacy, all); each prints its figures
and can write JSON. The measurements live in ``fedcogen.simulations.bench``; this module holds their flags."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedcogen.cli.bench_scale import add_scale
from fedcogen.cli.common import add_command, add_group, add_json_out, module_doc, write_json
from fedcogen.cli.flags import add_device_flag
from fedcogen.simulations.bench.comm_config import CommBenchConfig, preset


def register(sub: argparse._SubParsersAction) -> None:
    _, bsub = add_group(
        sub, "bench", "benchmarks: communication (comm) and more; each writes JSON + markdown", dest="bench_command",
        metavar="BENCH",
        description="Benchmarks with honest measurements. Each subcommand prints a table and can write JSON.",
    )
    p = add_command(bsub, "comm", "cost-to-target: bytes each compressed run needs to reach converged dense fp32 LoRA "
                    "FedAvg's quality levels, over seeds", description=module_doc("fedcogen.simulations.bench.bench_comm"),
                    func=_comm)
    p.add_argument("--config", help="benchmark preset (TOML: [recipe] + [bench]); default "
                   "simulations/bench/comm_full.toml (SmolLM2, full size), comm_quick.toml with --quick")
    p.add_argument("--quick", action="store_true", help="the quick preset: random tiny model (about 25 min on 2 cores)")
    add_json_out(p)
    p.add_argument("--out-dir", default="runs/bench_comm", help="folder for runs, plots, bench_comm.md/.json")
    p.add_argument("--variants", default="", help="variants to compare, comma-separated names, each optionally NAME:N "
                   "with its own round cap N (default: the preset's list)")
    p.add_argument("--variants-file", help="TOML file defining the variants (default: the preset's, "
                   "simulations/bench/comm_variants.toml)")
    p.add_argument("--seeds", help="comma-separated seeds (default: the preset's)")
    p.add_argument("--lr-grid", help="comma-separated learning rates every run family is swept over (default: the preset's)")
    p.add_argument("--throughput", action=argparse.BooleanOptionalAction, default=False,
                   help="also measure training throughput vs a plain PEFT loop")
    p.add_argument("--engine", default="loopback", choices=["loopback", "flower"],
                   help="loopback: same apps in one process (no Ray noise); flower: Ray simulation engine")
    p.add_argument("--reuse", action="store_true", help="read back runs already finished in --out-dir instead of "
                   "running them again (continue an interrupted benchmark); only runs made by this commit from a "
                   "clean tree with identical settings, any other stops the benchmark naming the difference")
    p.add_argument("--force-reuse", action="store_true", help="like --reuse, but read back finished runs even if "
                   "made by other code or settings (differences printed; e.g. outside a git checkout)")

    p = add_command(bsub, "cogen", "CoGenesis: wire bytes per token, top-k fidelity, variant speed, cloud batching",
                    description=module_doc("fedcogen.simulations.bench.bench_cogen"), func=_cogen)
    p.add_argument("--quick", action="store_true", help="tiny models (seconds) instead of SmolLM2 (minutes)")
    p.add_argument("--out", default="runs/bench-cogen", help="folder for bench_cogen.json / bench_cogen.md")
    p.add_argument("--cloud-model", help="override the cloud model of the chosen mode")
    p.add_argument("--device-models", help="override the device models (comma-separated)")
    add_device_flag(p, "both models")

    p = add_command(bsub, "fuzz", "malformed blobs vs the sparse/logit decoders and the server's update validation",
                    description=module_doc("fedcogen.simulations.bench.bench_fuzz"), func=_fuzz)
    p.add_argument("--blobs", type=int, default=10_000, help="how many malformed inputs in all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="1,000 blobs")
    add_json_out(p)

    p = add_command(bsub, "load", "32 concurrent CoGenesis sessions for 60 s against one TLS + token cloud: errors, "
                    "p50/p99", description=module_doc("fedcogen.simulations.bench.bench_load"), func=_load)
    p.add_argument("--sessions", type=int, default=32)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--tokens", type=int, default=16, help="steps per session before it closes and reopens")
    p.add_argument("--model", default="tiny-large", help="cloud model (tiny-large keeps CPU runs short)")
    p.add_argument("--quick", action="store_true", help="8 sessions for 10 s")
    add_json_out(p)

    p = add_command(bsub, "codec", "sparse codec: index bits vs the log2 C(n,k) bound, encode+decode speed",
                    description=module_doc("fedcogen.simulations.bench.bench_codec"), func=_codec)
    p.add_argument("--seed", type=int, default=0)
    add_json_out(p)

    p = add_command(bsub, "adapters", "per-step learning of LoRA, FFA-LoRA and the Fed-SB core on one client (why "
                    "the core misses dense's loss)", description=module_doc("fedcogen.simulations.bench.bench_adapters"),
                    func=_adapters)
    p.add_argument("--steps", type=int, default=6, help="local AdamW steps per form")
    p.add_argument("--quick", action="store_true", help="tiny model (seconds)")
    p.add_argument("--out-dir", default="runs/bench_adapters", help="folder for the data and bench_adapters.md")
    add_json_out(p)

    p = add_command(bsub, "engine", "the cloud on llama.cpp's server vs the built-in scheduler (needs `make engine`)",
                    description=module_doc("fedcogen.simulations.bench.bench_engine"), func=_engine)
    p.add_argument("--tasks", type=int, default=3, help="tasks (1-4), each answered by every variant on both clouds")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--k", type=int, default=20, help="top-k log-probs per position")
    p.add_argument("--threads", type=int, default=1, help="torch threads here and llama.cpp threads in the engine")
    add_json_out(p)

    p = add_command(bsub, "draft-edit", "the device's forward cost for 1 vs k tokens and the projected device-side "
                    "time per answer of draft_edit vs the device alone (cloud on separate hardware)",
                    description=module_doc("fedcogen.simulations.bench.bench_draft_edit"), func=_draft_edit)
    p.add_argument("--results", type=Path, action="append", default=[],
                   help="a `fedcogen eval --json` file with device_personalised and/or draft_edit answers to project "
                   "(repeat it for one run per variant; without it: only the forward costs)")
    p.add_argument("--model", default="smollm2-27l", help="the device model whose forwards are timed")
    p.add_argument("--context-tokens", type=int, default=300, help="KV cache length the forwards run on")
    p.add_argument("--widths", default="1,2,4,8,12,17", help="tokens per forward to time (comma-separated, with 1)")
    p.add_argument("--repeats", type=int, default=9, help="timed forwards per width (median)")
    p.add_argument("--report", type=Path, help="also write the markdown tables here")
    add_device_flag(p, "the device model")
    add_json_out(p)

    add_scale(bsub)

    for name, help_, out_dir, func in (
        ("privacy", "DP / attacks / wire audit figures (runs `fedcogen privacy run`)", "runs/bench_privacy", _privacy),
        ("all", "comm + cogen + privacy, one after another, into one JSON + markdown table", "runs/bench", _all),
    ):
        p = add_command(bsub, name, help_, func=func)
        p.add_argument("--quick", action="store_true", help="tiny models everywhere (the full run takes hours on 2 cores)")
        add_json_out(p)
        p.add_argument("--out-dir", default=out_dir, help="folder for each benchmark's runs and reports")


def _adapters(args: argparse.Namespace) -> int:
    from fedcogen.simulations.bench.bench_adapters import report, run_probe

    result = run_probe(args.out_dir, steps=args.steps, quick=args.quick)
    Path(args.out_dir, "bench_adapters.md").write_text(report(result))
    write_json(args.json_out, result, args=args)
    print(f"report: {Path(args.out_dir, 'bench_adapters.md')}")
    return 0


def _csv(text: str | None, kind: type) -> tuple | None:
    return tuple(kind(x) for x in text.split(",") if x.strip()) if text else None


def comm_config(args: argparse.Namespace) -> CommBenchConfig:
    """The preset (``--config`` or the full/quick one), then the flags that were given."""
    cfg = CommBenchConfig.from_file(args.config) if args.config else preset(args.quick)
    return cfg.with_overrides(variants=_csv(args.variants, str), seeds=_csv(args.seeds, int),
                              lr_grid=_csv(args.lr_grid, float), variants_file=args.variants_file)


def _comm(args: argparse.Namespace) -> int:
    from fedcogen.simulations.bench.bench_comm import run_bench
    from fedcogen.simulations.bench.comm_report import print_table

    result = run_bench(comm_config(args), out_dir=args.out_dir, engine=args.engine, reuse=args.reuse,
                       force_reuse=args.force_reuse, throughput=args.throughput)
    print_table(result)
    if args.json_out:
        write_json(args.json_out, result, args=args)
        print(f"\nJSON: {args.json_out}")
    print(f"report: {Path(args.out_dir) / 'bench_comm.md'}; plots: loss_vs_round.png, loss_vs_bytes.png")
    return 0


def _cogen(args: argparse.Namespace) -> int:
    from fedcogen.simulations.bench.bench_cogen import CogenBenchConfig, run_cogen_bench

    cfg = CogenBenchConfig.for_mode(args.quick)
    if args.cloud_model:
        cfg.cloud_model = args.cloud_model
    cfg.device = args.device
    if args.device_models:
        cfg.device_models = tuple(m.strip() for m in args.device_models.split(",") if m.strip())
    result = run_cogen_bench(quick=args.quick, out_dir=args.out, config=cfg)
    speed = {name: {v: {k: round(r[k], 3) for k in ("tokens_per_s", "ratio_to_device", "cloud_call_fraction")}
                    for v, r in row["speed"].items()} for name, row in result["devices"].items()}
    print(json.dumps({"speed": speed, "aggregate_tokens_per_s": result["aggregate_tokens_per_s"],
                      "targets": result["targets"], "machine": result["machine_start"]}, indent=2))
    print(f"report: {Path(args.out) / 'bench_cogen.md'}")
    return 0


def _draft_edit(args: argparse.Namespace) -> int:
    from fedcogen.simulations.bench.bench_draft_edit import (
        DraftEditBenchConfig,
        markdown,
        run_draft_edit_bench,
    )

    cfg = DraftEditBenchConfig(model=args.model, context_tokens=args.context_tokens, widths=_csv(args.widths, int) or (),
                               repeats=args.repeats, device=args.device)
    result = run_draft_edit_bench(cfg, args.results)
    text = markdown(result)
    print(text)
    if args.report:
        args.report.write_text(text)
    write_json(args.json_out, result, args=args)
    return 0


def _engine(args: argparse.Namespace) -> int:
    from fedcogen.simulations.bench.bench_engine import EngineBenchConfig, run_engine_bench

    result = run_engine_bench(EngineBenchConfig(tasks=args.tasks, max_new_tokens=args.max_new_tokens, k=args.k,
                                                threads=args.threads))
    print(json.dumps({key: result[key] for key in ("engine", "variants", "top1", "scoring", "engine_client")},
                     indent=1))
    write_json(args.json_out, result, args=args)
    return 0


def _fuzz(args: argparse.Namespace) -> int:
    from fedcogen.simulations.bench.bench_fuzz import FuzzConfig, run_fuzz

    result = run_fuzz(FuzzConfig(blobs=1000 if args.quick else args.blobs, seed=args.seed))
    print(json.dumps(result, indent=1))
    write_json(args.json_out, result, args=args)
    return 0 if result["ok"] else 1


def _load(args: argparse.Namespace) -> int:
    from fedcogen.simulations.bench.bench_load import LoadConfig, run_load

    cfg = LoadConfig(sessions=args.sessions, seconds=args.seconds, tokens=args.tokens, model=args.model)
    if args.quick:
        cfg.sessions, cfg.seconds = 8, 10.0
    result = run_load(cfg)
    print(json.dumps(result, indent=1))
    write_json(args.json_out, result, args=args)
    return 0 if result["errors"] == 0 else 1


def _codec(args: argparse.Namespace) -> int:
    from fedcogen.simulations.bench.bench_codec import markdown, run_benchmark

    result = run_benchmark(seed=args.seed)
    print(markdown(result))
    write_json(args.json_out, result, args=args)
    return 0


def _privacy(args: argparse.Namespace) -> int:
    from fedcogen.simulations.bench.bench_all import run_privacy_bench, write_suite

    write_suite({"privacy": run_privacy_bench(args.quick, args.out_dir)}, args.json_out, Path(args.out_dir))
    return 0


def _all(args: argparse.Namespace) -> int:
    from fedcogen.simulations.bench.bench_all import run_all, write_suite

    write_suite(run_all(args.quick, args.out_dir), args.json_out, Path(args.out_dir))
    return 0
