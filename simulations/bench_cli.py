"""`fedcogen bench`: benchmark command group (comm, and the ones other modules add).

Each benchmark lives in its own module exposing ``register_bench(bench_subparsers)``; add its dotted
name to :data:`BENCH_MODULES` to get a ``fedcogen bench NAME`` subcommand. Modules that are listed
but not importable are skipped with a note in ``--help`` (benchmarks are optional extras).
"""

from __future__ import annotations

import argparse
import importlib

# Modules adding `fedcogen bench <name>` subcommands, in --help order.
BENCH_MODULES: tuple[str, ...] = (
    "fedcogen.simulations.bench_comm",
    "fedcogen.simulations.bench_cogen",
    "fedcogen.simulations.bench_fuzz",
    "fedcogen.simulations.bench_load",
    "fedcogen.simulations.bench_all",
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmarks: communication (comm) and more; each writes JSON + markdown",
        description="Benchmarks with honest measurements. Each subcommand prints a table and can write JSON.",
    )
    bsub = p.add_subparsers(dest="bench_command", metavar="BENCH")
    missing = []
    for name in BENCH_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            missing.append(f"{name} ({exc})")
            continue
        module.register_bench(bsub)
    if missing:
        p.epilog = "unavailable benchmarks: " + "; ".join(missing)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
