"""`fedcogen bench scale`: peak memory, seconds and bytes per round for 10 / 100 / 1,000 simulated clients.

The measurement lives in :mod:`fedcogen.simulations.bench.bench_scale`; this module holds its flags (the
``bench`` group in :mod:`fedcogen.cli.bench` adds it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedcogen.cli.common import add_command, add_json_out, module_doc, write_json


def add_scale(bsub: argparse._SubParsersAction) -> None:
    p = add_command(bsub, "scale", "peak RSS, seconds and bytes per round for 10 / 100 / 1,000 simulated clients",
                    description=module_doc("fedcogen.simulations.bench.bench_scale"), func=_scale)
    p.add_argument("--models", default="tiny,smollm2-27l", help="comma-separated models, one column each")
    p.add_argument("--clients", default="10,100,1000", help="comma-separated numbers of simulated clients")
    p.add_argument("--clients-per-round", type=int, default=10, help="clients sampled per round")
    p.add_argument("--eval-clients", type=int, default=10, help="fixed evaluation cohort size")
    p.add_argument("--rounds", type=int, default=2, help="federated rounds per run (after round 0)")
    p.add_argument("--max-seq-len", type=int, default=96, help="tokens per example (cheap rounds)")
    p.add_argument("--engine", default="flower", choices=["flower", "loopback"],
                   help="flower: flwr run on the Ray simulation engine; loopback: the same apps in one process")
    p.add_argument("--quick", action="store_true", help="tiny model, 10 and 100 clients (a few minutes)")
    p.add_argument("--out-dir", default="runs/bench-scale", help="folder for runs, bench_scale.json and .md")
    add_json_out(p)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _scale(args: argparse.Namespace) -> int:
    from fedcogen.simulations.bench.bench_scale import ScaleBenchConfig, markdown, run_bench

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    clients = _ints(args.clients)
    if args.quick:
        models, clients = ["tiny"], [10, 100]
    cfg = ScaleBenchConfig(models=models, clients=clients, clients_per_round=args.clients_per_round,
                           eval_clients=args.eval_clients, rounds=args.rounds, max_seq_len=args.max_seq_len,
                           engine=args.engine, out_dir=args.out_dir)
    result = run_bench(cfg)
    print(markdown(result))
    write_json(args.json_out, result, args=args)
    print(f"report: {Path(args.out_dir) / 'bench_scale.md'}")
    return 0
