"""`fedcogen demo`: the main job, end to end (what `make demo` runs)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from fedcogen.cli.common import add_command
from fedcogen.cli.flags import add_device_flag


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "demo", "run the whole system end to end and write a report (what `make demo` runs)", func=_run,
        description=(
            "Generate a small private-writing federation, train a personalised LoRA adapter with sparse "
            "federated learning in the Flower simulation engine, start the CoGenesis cloud service on "
            "loopback with TLS and a token, evaluate every generation variant on held-out tasks of training "
            "users and of users that never trained, run the wire audit and quick privacy figures, and write "
            "runs/<name>/report.md, metrics.json and plots. Every other DemoConfig field can be set "
            "with --config."
        ),
        formatter=argparse.HelpFormatter,
    )
    p.add_argument("--config", help="TOML/JSON file with demo settings (see simulations/demo/demo.py DemoConfig); "
                                    "run settings by name or by their grouped pyproject keys (lora.r, ...)")
    p.add_argument("--preset", help="named run settings from simulations/federation/presets/ (e.g. lean-comm), "
                                    "applied before --config and the flags")
    p.add_argument("--quick", action="store_true", help="tiny random models, one-minute smoke run")
    p.add_argument("--name", default=None, help="run name (default: demo or demo-quick)")
    p.add_argument("--out", default="runs", help="parent folder of the run folder (default: runs)")
    p.add_argument("--users", type=int, default=None, help="devices that take part in federated training")
    p.add_argument("--heldout-users", type=int, default=None, help="devices that never train (generalisation)")
    p.add_argument("--clients-per-round", type=int, default=None, help="devices sampled per round")
    p.add_argument("--rounds", type=int, default=None, help="federated rounds")
    p.add_argument("--local-steps", type=int, default=None, help="local LoRA steps per client per round")
    p.add_argument("--density", type=float, default=None, help="top-k density of sparse updates")
    p.add_argument("--lr", type=float, default=None, help="local learning rate")
    p.add_argument("--seen-tasks", type=int, default=None, help="held-out test tasks per training user")
    p.add_argument("--unseen-tasks", type=int, default=None, help="test tasks per held-out user")
    p.add_argument("--eval-batch", type=int, default=None, help="answers decoded in lockstep")
    p.add_argument("--variants", default=None,
                   help="comma-separated variants to answer with (default: every report variant but draft_edit, "
                        "which measured below the personalised device; cloud, device and device_personalised "
                        "are required)")
    p.add_argument("--foreign-tasks", type=int, default=None,
                   help="users of the foreign-format set evaluated, one task each (0 = skip that group)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="tokens generated per answer")
    p.add_argument("--seed", type=int, default=None, help="seed for data, training and sampling")
    add_device_flag(p, "training, the device model and the cloud", default=None)


def _run(args: argparse.Namespace) -> int:
    from fedcogen.simulations.demo.demo import run_demo

    result = run_demo(config_from_args(args))
    print(f"\nreport:  {result['report']}\nmetrics: {result['metrics']}")
    if result.get("failures"):
        sys.stdout.flush()
        print("error: not every variant ran as asked (the report counts these answers, outside the means):\n  "
              + "\n  ".join(result["failures"]), file=sys.stderr)
        return 1
    return 0


def config_from_args(args: argparse.Namespace) -> Any:
    """DemoConfig from defaults, then the --config file, then the flags that were given.

    Keys are DemoConfig's own fields or run settings (FLSettings fields, plus the demo's aliases such
    as ``users``); anything else is an error naming the key.
    """
    from fedcogen.config_file import read_config_file
    from fedcogen.run_config import FLSettings, attributes_of, flatten
    from fedcogen.simulations.demo.demo import DEMO_RUN, RUN_ALIASES, DemoConfig
    from fedcogen.simulations.federation.federation import preset_file

    values: dict[str, Any] = {}
    files = [preset_file(args.preset)] if getattr(args, "preset", None) else []
    if getattr(args, "config", None):
        if not Path(args.config).is_file():
            raise FileNotFoundError(f"demo config {args.config} not found")
        files.append(Path(args.config))
    for path in files:  # grouped run keys (lora.r, as pyproject writes them) read as the attribute they name
        flat = flatten(read_config_file(path))
        values.update({k: v for k, v in flat.items() if "." not in k})
        values.update(attributes_of({k: v for k, v in flat.items() if "." in k}))
    own = {f.name for f in fields(DemoConfig)} - {"run"}
    run_keys = {f.name for f in fields(FLSettings)} | set(RUN_ALIASES)
    unknown = set(values) - own - run_keys
    if unknown:
        raise ValueError(f"unknown demo config keys: {sorted(unknown)} (known: {sorted(own | run_keys)})")
    for name in own | run_keys:
        v = getattr(args, name, None)
        if v is not None and v is not False:
            values[name] = v
    run = {RUN_ALIASES.get(k, k): v for k, v in values.items() if k in run_keys}
    values = {k: v for k, v in values.items() if k in own}
    if "name" not in values:
        values["name"] = "demo-quick" if values.get("quick") else "demo"
    return DemoConfig(run=FLSettings.from_mapping({**DEMO_RUN.to_config(), **run}), **values)
