"""`fedcogen gpu-check`: run the quick demo, a short federation and the cogen benchmark on a CUDA GPU."""

from __future__ import annotations

import argparse
import json

from fedcogen.cli.common import add_command, module_doc
from fedcogen.cli.flags import device_setting


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "gpu-check", "verify the GPU paths on a CUDA machine (demo, federation, cogen bench)",
                    description=module_doc("fedcogen.simulations.deploy.gpu_check"), func=_run)
    p.add_argument("--device", type=device_setting, default="cuda", help="CUDA device to check (cuda or cuda:N)")
    p.add_argument("--out", default="runs/gpu-check", help="folder for gpu_check.json and each stage's output")
    p.add_argument("--stages", default="probe,demo,federation,bench_cogen",
                   help="comma-separated subset of probe,demo,federation,bench_cogen")
    p.add_argument("--stage-timeout", type=float, default=900.0, help="seconds each stage may take")
    p.add_argument("--gpus-per-client", type=float, default=0.25,
                   help="Ray GPU share of each simulated client in the federation stage")


def _run(args: argparse.Namespace) -> int:
    from fedcogen.simulations.deploy.gpu_check import GpuCheckConfig, run_gpu_check

    cfg = GpuCheckConfig(device=args.device, out=args.out, stage_timeout_s=args.stage_timeout,
                         stages=tuple(s.strip() for s in args.stages.split(",") if s.strip()),
                         gpus_per_client=args.gpus_per_client)
    report = run_gpu_check(cfg)
    print(json.dumps({k: {"ok": v["ok"], "seconds": v.get("seconds"), "figures": v.get("figures", v)}
                      for k, v in report["stages"].items()}, indent=2, default=str))
    print(f"gpu check {'PASSED' if report['ok'] else 'FAILED'}; details in {args.out}/gpu_check.json")
    return 0 if report["ok"] else 1
