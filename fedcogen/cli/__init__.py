"""The `fedcogen` console script: the only place argparse appears.

Each command lives in its own module of this package exposing ``register(subparsers)`` (shared
shapes in :mod:`fedcogen.cli.common`); the library modules they call have no ``main`` and no flags.
Heavy imports (torch, transformers, flwr) happen inside the handlers so that ``fedcogen --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from fedcogen.cli.common import HelpFormatter, all_parsers

VERBOSE_HELP = "debug logging, library logs and warnings (default: fedcogen's own progress only)"

# Modules that add subcommands, in the order they appear in --help.
COMMAND_MODULES: tuple[str, ...] = (
    "fedcogen.cli.models",
    "fedcogen.cli.data",
    "fedcogen.cli.cloud",
    "fedcogen.cli.generate",
    "fedcogen.cli.certs",
    "fedcogen.cli.deploy",
    "fedcogen.cli.eval",
    "fedcogen.cli.ablation",
    "fedcogen.cli.demo",
    "fedcogen.cli.privacy",
    "fedcogen.cli.gate",
    "fedcogen.cli.simulate",
    "fedcogen.cli.bench",
    "fedcogen.cli.gpu_check",
    "fedcogen.cli.stubs",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedcogen",
        description=(
            "Federated sparse-LoRA fine-tuning of small language models on devices, and CoGenesis "
            "collaboration with a cloud model that never sees the private context."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    for p in all_parsers(parser):
        p.formatter_class = HelpFormatter  # one help style, whatever a command module asked for
        if p is not parser:
            # `fedcogen simulate -v` as well as `fedcogen -v simulate`; SUPPRESS keeps the top-level value
            # when the flag is not given after the subcommand
            p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser


class _QuietLibraries(logging.Filter):
    """Default output: fedcogen's own INFO lines, and only warnings and errors from libraries
    (Flower, Ray, alembic and transformers are chatty at INFO/DEBUG)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("fedcogen") or record.levelno >= logging.WARNING


class _PlainInfo(logging.Formatter):
    """Default console format: an INFO line is just its message (a user reads results, not timestamps);
    warnings and errors keep their level and source."""

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno == logging.INFO:
            return record.getMessage()
        return f"{record.levelname} {record.name}: {super().format(record)}"


def configure_logging(verbose: bool) -> None:
    import warnings

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_QuietLibraries())
            handler.setFormatter(_PlainInfo())
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="transformers|peft|torch")
        # transformers' per-load "Loading weights" bars (read at its import, inherited by child processes);
        # fedcogen's own progress bars use tqdm directly and stay
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as exc:  # user errors: one clear line, no traceback
        if args.verbose:
            raise
        print(f"fedcogen {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return int(rc or 0)

