"""`fedcogen simulate`: run a federated sparse-LoRA simulation with the real Flower apps.

Settings come from defaults < a config file (``--config run.toml`` / ``.json``, run settings by
their grouped pyproject keys) < flags; every field of :class:`fedcogen.run_config.FLSettings` and of
:class:`fedcogen.simulations.federation.federation.SimulationConfig` has a flag, built from the
dataclasses (``lora.r`` is ``--lora-r``, ``compress.density`` is ``--density``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from fedcogen.cli.flags import add_dataclass_flags, flag_values
from fedcogen.run_config import FLSettings
from fedcogen.simulations.federation.federation import (
    SimulationConfig,
    load_config_file,
    preset_file,
    run_federation,
)
from fedcogen.simulations.federation.flwr_run import RunFailed


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="run a federated sparse-LoRA simulation (Flower simulation engine)",
        description=(
            "Fine-tune a LoRA adapter across simulated devices with Flower: sparse top-k updates with "
            "error feedback up, compressed broadcast down, validation of every update, byte ledger of "
            "every message, checkpoint/resume. Settings: defaults < --preset < --config file < flags."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", help="TOML or JSON file: run settings by their grouped pyproject keys (lora.r, "
                                    "compress.density, ...), engine fields by name (TOML may use [simulation]); "
                                    "--print-config shows one")
    p.add_argument("--preset", help="named run settings from simulations/federation/presets/ (lean-comm: the "
                                    "communication benchmark's best; docs/communication.md)")
    p.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    add_dataclass_flags(p, FLSettings)
    add_dataclass_flags(p, SimulationConfig, skip=("run",))
    p.set_defaults(func=_run)


def build_config(args: argparse.Namespace) -> SimulationConfig:
    values: dict[str, Any] = load_config_file(preset_file(args.preset)) if getattr(args, "preset", None) else {}
    if args.config:
        values.update(load_config_file(args.config))
    values.update(flag_values(args, FLSettings))
    values.update(flag_values(args, SimulationConfig, skip=("run",)))
    return SimulationConfig.from_dict(values)


def _run(args: argparse.Namespace) -> int:
    cfg = build_config(args)
    if args.print_config:
        print(json.dumps(cfg.to_file_values(), indent=1))
        return 0
    try:
        result = run_federation(cfg)
    except RunFailed as exc:  # the cause (the ServerApp's own error) is the last thing on screen
        print(f"\nfedcogen simulate: error: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, SystemExit) as exc:  # SIGINT, or SIGTERM/SIGHUP via cleanup_on_signals
        if isinstance(exc, SystemExit) and exc.code in (None, 0):
            raise
        print(f"\nfedcogen simulate: stopped by a signal; every process of the run was stopped. The last "
              f"checkpoint in {cfg.run.out_dir} continues with the same command and --resume.", file=sys.stderr)
        raise
    print()
    print(f"rounds completed : {result['completed_rounds']}")
    print(f"final eval loss  : {result['final_eval_loss']:.4f} (ppl {result['final_eval_ppl']:.2f})")
    b = result["bytes"]
    print(f"bytes            : up {b['up']:,}  down {b['down']:,}  total {b['all']:,}")
    print(f"rejected updates : {result['rejected_total'] or 'none'}; client failures: {result['failures_total']}")
    print(f"outputs          : {cfg.run.out_dir}/metrics.json, metrics.md, ledger.json, checkpoint.npz, "
          "loss_vs_round.png, loss_vs_bytes.png")
    return 0
