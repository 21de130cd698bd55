"""`fedcogen privacy scale`: DP at cross-device scale: epsilon, utility cost, canary exposure and MIA.

The experiment lives in :mod:`fedcogen.simulations.privacy.dp_scale`; this module holds its flags (the
``privacy`` group in :mod:`fedcogen.cli.privacy` adds it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedcogen.cli.common import add_command, module_doc, write_json


def add_scale(ps: argparse._SubParsersAction) -> None:
    p = add_command(ps, "scale", "cross-device DP: a no-DP run and one DP run per noise level over many clients; "
                    "epsilon at 1/N^1.1, share of the no-DP gain kept, canary exposure, MIA", description=module_doc("fedcogen.simulations.privacy.dp_scale"), func=_scale)
    p.add_argument("--model", default="smollm2-27l", help="device model")
    p.add_argument("--num-clients", type=int, default=1000, help="simulated clients N (delta = 1/N^1.1)")
    p.add_argument("--clients-per-round", type=int, default=50, help="clients sampled per round")
    p.add_argument("--rounds", type=int, default=10, help="federated rounds")
    p.add_argument("--noise", type=_noise_list, default=(1.0,), metavar="S1,S2,...",
                   help="noise multipliers sigma, one DP run each (the frontier), e.g. 0.7,1.0,1.5")
    p.add_argument("--noise-multiplier", type=float, default=None, help="one noise level (same as --noise S)")
    p.add_argument("--lora-mode", default="lora", choices=["lora", "freeze_a", "core", "core_rand"],
                   help="what is trained and averaged (the DP noise is spread over every trained value)")
    p.add_argument("--lora-r", type=int, default=8, help="LoRA rank")
    p.add_argument("--lora-targets", default="q_proj,v_proj", help="modules that get LoRA")
    p.add_argument("--density", type=float, default=0.05, help="fraction of each client update sent")
    p.add_argument("--server-opt", default="fedavg", choices=["fedavg", "fedadam", "fedyogi"], help="server optimiser")
    p.add_argument("--server-lr", type=float, default=1.0, help="server learning rate")
    p.add_argument("--history", action=argparse.BooleanOptionalAction, default=True,
                   help="also train on the users' past texts (where the canaries are)")
    p.add_argument("--seed", type=int, default=0, help="run seed (data, initialisation, training; not DP noise)")
    p.add_argument("--clip", type=float, default=0.5, help="DP clip norm C of each client update")
    p.add_argument("--lr", type=float, default=5e-3, help="local learning rate")
    p.add_argument("--local-steps", type=int, default=1, help="local steps per round")
    p.add_argument("--batch-size", type=int, default=4, help="examples per local step")
    p.add_argument("--max-seq-len", type=int, default=128, help="tokens per example")
    p.add_argument("--eval-clients", type=int, default=32, help="fixed evaluation cohort")
    p.add_argument("--engine", default="loopback", choices=["loopback", "flower"], help="simulation engine")
    p.add_argument("--attack-canaries", type=int, default=16, help="canaries (of clients that trained) scored per run")
    p.add_argument("--alternatives", type=int, default=31, help="random secrets each canary is ranked against")
    p.add_argument("--mia-examples", type=int, default=48, help="members and as many non-members per MIA")
    p.add_argument("--quick", action="store_true", help="tiny model, 60 clients, 3 rounds (a couple of minutes)")
    p.add_argument("--out-dir", default="runs/dp-scale", help="folder for runs, dp_scale.json and dp_scale.md")
    p.add_argument("--json", dest="json_out", help="also write the result JSON here")


def _noise_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--noise wants comma-separated numbers, got {text!r}") from exc
    if not values or not all(v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"--noise wants noise multipliers > 0, got {text!r}")
    return values


def _scale(args: argparse.Namespace) -> int:
    from fedcogen.simulations.privacy.dp_scale import DP_SCALE_RUN, DPScaleConfig, markdown, run_dp_scale

    run = DP_SCALE_RUN.replace(model=args.model, num_clients=args.num_clients,
                               clients_per_round=args.clients_per_round, rounds=args.rounds, dp_clip_norm=args.clip,
                               lr=args.lr, local_steps=args.local_steps, batch_size=args.batch_size,
                               max_seq_len=args.max_seq_len, eval_clients=args.eval_clients, lora_mode=args.lora_mode,
                               lora_r=args.lora_r, lora_alpha=2 * args.lora_r, lora_targets=args.lora_targets,
                               density=args.density, server_opt=args.server_opt, server_lr=args.server_lr,
                               history_examples=args.history, seed=args.seed)
    if args.quick:
        run = run.replace(model="tiny", num_clients=60, clients_per_round=20, rounds=3, max_seq_len=64,
                          eval_clients=8)
    noise = (args.noise_multiplier,) if args.noise_multiplier is not None else args.noise
    cfg = DPScaleConfig(run=run, noise_multipliers=noise, engine=args.engine, out_dir=args.out_dir,
                        attack_canaries=args.attack_canaries, n_alternatives=args.alternatives,
                        mia_max_examples=min(args.mia_examples, 24) if args.quick else args.mia_examples)
    result = run_dp_scale(cfg)
    print(markdown(result))
    if args.json_out:
        write_json(args.json_out, result, args=args)
    front = result["frontier"]
    print(json.dumps({"delta": result["delta"], "no_dp_relative_gain": front["no_dp_relative_gain"],
                      "frontier": [{k: p[k] for k in ("noise_multiplier", "epsilon", "gain_kept")} for p in front["points"]],
                      "target_met": front["target_met"], "seconds": result["seconds"]}))
    print(f"report: {Path(args.out_dir) / 'dp_scale.md'}")
    return 0
