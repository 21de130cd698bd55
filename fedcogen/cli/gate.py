"""`fedcogen gate train`: the learned fusion gate, trained on public synthetic tasks, stored with the adapter.

Why a command of its own: every figure before it used a fixed fusion weight of 0.5, and the only
trainer (``train_gate``) streamed the user's private target answers to the cloud. This command draws
fake users from the data generator (a seed of their own: data the cloud may see), screens them on
the device against the user's own private texts and profile (``client/cogen/public_gate.py``), trains
the gate over the cloud's ``Decode`` stream and saves it as ``<adapter>/fusion_gate.pt``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedcogen.cli.common import DEVICE_MODEL, add_command, add_group, add_token_args, module_doc, token_of


def register(sub: argparse._SubParsersAction) -> None:
    _, ps = add_group(sub, "gate", "fusion gates: train the learned gate, calibrate the uncertainty gate",
                      dest="gate_command",
                      description=__doc__)
    t = add_command(ps, "train", "train the fusion gate on fake users' tasks and store it with the adapter",
                    func=_train)
    t.add_argument("--adapter", required=True, help="personalised adapter folder (the gate is saved inside it)")
    t.add_argument("--device-model", default=DEVICE_MODEL, help="device model the adapter belongs to")
    t.add_argument("--data", required=True, help="the device's own federation folder (private texts to screen against)")
    t.add_argument("--user", required=True, help="the device's user id (its profile and texts are screened against)")
    t.add_argument("--cloud", help="cloud HOST:PORT (default: an in-process loopback cloud of --cloud-model)")
    t.add_argument("--cloud-model", default="smollm2", help="cloud model for the in-process loopback cloud")
    t.add_argument("--tls-dir", help="with --cloud: folder with ca.crt")
    t.add_argument("--insecure", action="store_true", help="with --cloud: plaintext (testing only)")
    add_token_args(t)
    t.add_argument("--public-users", type=int, default=6, help="fake users drawn for training (default 6)")
    t.add_argument("--public-tasks", type=int, default=4, help="train tasks per fake user (default 4)")
    t.add_argument("--public-seed", type=int, default=1_000_003, help="seed of the fake users (not the real data's)")
    t.add_argument("--epochs", type=int, default=60)
    t.add_argument("--out", help="gate file (default: <adapter>/fusion_gate.pt)")

    c = add_command(ps, "calibrate", "choose the gated variant's uncertainty threshold on validation tasks",
                    func=_calibrate, description=module_doc("fedcogen.simulations.evaluation.gate_calibration"))
    c.add_argument("--device-model", default=DEVICE_MODEL, help="device model name or local folder")
    c.add_argument("--cloud-model", default="smollm2")
    c.add_argument("--users", type=int, default=6, help="synthetic users whose validation tasks are used")
    c.add_argument("--tasks-per-user", type=int, default=3)
    c.add_argument("--max-tokens", type=int, default=96, help="reference tokens per task")
    c.add_argument("--max-call-fraction", type=float, default=0.2, help="most tokens the gate may send to the cloud")
    c.add_argument("--max-quality-loss", type=float, default=0.01,
                   help="largest relative NLL increase vs always-fuse on the references")
    c.add_argument("--out", default="runs/gate-calibration", help="folder for gate_calibration.json")


def _train(args: argparse.Namespace) -> int:
    from fedcogen import dataset as d
    from fedcogen.client.cogen.cogen_device import CogenDevice, DeviceConfig
    from fedcogen.client.cogen.public_gate import gate_path, train_public_gate
    from fedcogen.models import shared_model
    from fedcogen.server.cogen.cloud_service import CloudConfig, start_cloud_server

    fed = d.load_federation(args.data)
    private = [t.private_context for s in ("train", "val", "test") for t in fed.tasks_of(args.user, s)]
    private += [h.text for h in fed.history_of(args.user)]
    public = d.generate_federation(d.FederationConfig(n_users=args.public_users, seed=args.public_seed))
    examples = [{"instruction": t.instruction, "private_context": t.private_context, "target": t.reference}
                for u in d.user_ids(public) for t in public.tasks_of(u, "train")[: args.public_tasks]]
    cloud = None
    address = args.cloud
    if not address:
        cloud = start_cloud_server(CloudConfig(model=args.cloud_model, insecure=True),
                                   lm=shared_model(args.cloud_model))
        address = cloud.address
    device = CogenDevice(DeviceConfig(device_model=args.device_model, adapter=args.adapter, cloud=address,
                                      tls_dir=args.tls_dir, token=token_of(args),
                                      insecure=bool(args.insecure or cloud is not None)))
    try:
        gate, stats = train_public_gate(device, examples, private, extra_values=fed.profile(args.user).private_values,
                                        epochs=args.epochs)
    finally:
        device.close()
        if cloud is not None:
            cloud.stop(grace=1.0)
    out = Path(args.out) if args.out else gate_path(args.adapter)
    gate.save(out)
    print(json.dumps({"gate": str(out), **stats}, indent=2))
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from fedcogen.simulations.evaluation.gate_calibration import CalibrationConfig, calibrate

    cfg = CalibrationConfig(device_model=args.device_model, cloud_model=args.cloud_model, users=args.users,
                            tasks_per_user=args.tasks_per_user, max_tokens=args.max_tokens,
                            max_call_fraction=args.max_call_fraction, max_quality_loss=args.max_quality_loss)
    result = calibrate(cfg, args.out)
    ch = result["chosen"]
    print(json.dumps({"chosen": ch, "always_fuse": result["always_fuse"], "device_alone": result["device_alone"],
                      "target_met": result["target_met"], "positions": result["positions"]}, indent=2))
    print(f"use: --gated-metric {ch['metric']} --gated-threshold {ch['threshold']:.3f}  "
          f"(report: {Path(args.out) / 'gate_calibration.json'})")
    return 0
