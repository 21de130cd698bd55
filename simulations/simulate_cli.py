"""`fedcogen simulate`: run a federated sparse-LoRA simulation with the real Flower apps.

Settings come from defaults < a config file (``--config run.toml`` / ``.json``) < flags; every
field of :class:`fedcogen.simulations.federation.SimulationConfig` has a flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

_HELP = {
    "model": "base model: tiny, tiny-large, smollm2, smollm2-24l, smollm2-half or a local HF directory",
    "data_dir": "folder of the synthetic federation ('' = <out_dir>/data, generated from --seed)",
    "num_clients": "number of simulated devices (Flower SuperNodes)",
    "clients_per_round": "devices sampled per round",
    "rounds": "federated rounds",
    "local_steps": "local AdamW steps per round on each device",
    "batch_size": "examples per local step",
    "lr": "local learning rate",
    "max_seq_len": "tokens per example (prompt truncated from the left)",
    "history_examples": "also train on the user's past texts (no context; privacy runs need it for canaries)",
    "fact_swaps": "counterfactual copies of each training task with the user's private values swapped (teaches copying)",
    "lora_r": "LoRA rank",
    "lora_alpha": "LoRA alpha",
    "lora_dropout": "LoRA dropout",
    "lora_targets": "comma-separated module names that get LoRA (q_proj,v_proj)",
    "density": "fraction of each client update sent (top-k; 1.0 = dense)",
    "scope": "top-k per_tensor or global",
    "quant": "value precision on the wire: fp32, fp16, int8",
    "index_coding": "index code: auto, bitmap, delta_varint, rice",
    "down_density": "broadcast density (0 = density x clients_per_round)",
    "down_quant": "broadcast precision ('' = same as --quant)",
    "server_opt": "server optimiser: fedavg, fedadam, fedyogi",
    "server_lr": "server learning rate (1.0 + fedavg = plain FedAvg)",
    "min_fit_clients": "abort a round (model unchanged) if fewer updates are accepted",
    "round_timeout": "seconds to wait for replies each round",
    "eval_every": "evaluate on every client's private validation split every N rounds",
    "eval_on": "who evaluates: 'all' clients or only this 'round''s clients (no catch-up broadcasts)",
    "max_update_norm": "reject client updates with a larger L2 norm",
    "max_update_bytes": "reject client updates whose serialized blob is larger (bytes)",
    "seed": "seed of data, model, sampling and training",
    "out_dir": "output folder (metrics.json, ledger.json, checkpoint, plots)",
    "resume": "continue from the checkpoint in out_dir",
    "stop_after": "stop cleanly after this many rounds (0 = run all); resume later with --resume",
    "dp_mode": "differential privacy: none, client, server",
    "dp_clip_norm": "DP clip norm",
    "dp_noise_multiplier": "DP noise multiplier",
    "dp_delta": "DP delta",
    "dp_target_epsilon": "stop when epsilon would exceed this (0 = no budget)",
    "fail_prob": "testing: probability that a client drops in a round",
    "fail_nodes": "testing: 'P' or 'P@R' partitions that fail (comma separated)",
    "num_cpus_per_client": "Ray CPU share per simulated client",
    "engine": "flower (Ray simulation engine) or loopback (same apps, in one process)",
    "persist_client_state": "clients persist their state under out_dir/clients (needed for resume)",
}


def register(sub: argparse._SubParsersAction) -> None:
    from fedcogen.simulations.federation import SimulationConfig

    p = sub.add_parser(
        "simulate",
        help="run a federated sparse-LoRA simulation (Flower simulation engine)",
        description=(
            "Fine-tune a LoRA adapter across simulated devices with Flower: sparse top-k updates with "
            "error feedback up, compressed broadcast down, validation of every update, byte ledger of "
            "every message, checkpoint/resume. Settings: defaults < --config file < flags."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", help="TOML or JSON file with SimulationConfig fields (TOML may use [simulation])")
    p.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    for f in dataclasses.fields(SimulationConfig):
        flag = "--" + f.name.replace("_", "-")
        helptext = _HELP.get(f.name, f.name)
        if isinstance(f.default, bool):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                           help=f"{helptext} (default {f.default})")
        else:
            p.add_argument(flag, dest=f.name, type=type(f.default), default=None,
                           help=f"{helptext} (default {f.default!r})")
    p.set_defaults(func=_run)


def build_config(args: argparse.Namespace) -> Any:
    from fedcogen.simulations.federation import SimulationConfig, load_config_file

    values: dict[str, Any] = load_config_file(args.config) if args.config else {}
    for f in dataclasses.fields(SimulationConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    return SimulationConfig.from_dict(values)


def _run(args: argparse.Namespace) -> int:
    cfg = build_config(args)
    if args.print_config:
        print(json.dumps(dataclasses.asdict(cfg), indent=1))
        return 0
    from fedcogen.simulations.federation import run_federation

    result = run_federation(cfg)
    print()
    print(f"rounds completed : {result['completed_rounds']}")
    print(f"final eval loss  : {result['final_eval_loss']:.4f} (ppl {result['final_eval_ppl']:.2f})")
    b = result["bytes"]
    print(f"bytes            : up {b['up']:,}  down {b['down']:,}  total {b['all']:,}")
    print(f"rejected updates : {result['rejected_total'] or 'none'}; client failures: {result['failures_total']}")
    print(f"outputs          : {cfg.out_dir}/metrics.json, metrics.md, ledger.json, checkpoint.npz, "
          "loss_vs_round.png, loss_vs_bytes.png")
    return 0
