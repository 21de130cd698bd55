"""The GPU check: verify every GPU code path in minutes, the first time a CUDA machine is available.

Why it exists: the development machine has no GPU, so the CUDA branches (:mod:`fedcogen.accelerator`'s
``_cuda_device`` / ``_gpu_dtype``, bf16 base weights with fp32 master adapters, KV buffers and packed
forwards on the GPU, Ray GPU shares for simulated clients) are exercised by nothing else. This runs,
on ``cuda``, what a user runs first:

1. a placement probe in this process: a tiny model on the GPU in its compute dtype, a LoRA adapter
   with fp32 master weights, two training steps (loss, seconds, peak GPU memory);
2. ``fedcogen demo --quick --device cuda`` (federated training, the cloud over TLS, every variant);
3. ``fedcogen simulate --device cuda --num-gpus-per-client 0.25`` (a short Flower simulation whose
   clients share one GPU);
4. ``fedcogen bench cogen --quick --device cuda`` (wire bytes, variant speed, cloud batching).

Stages 2-4 are the real commands in child processes (as a user starts them), each with a deadline, and
each reports its exit code, seconds and headline figures; one failing stage does not hide the others.
Without a CUDA device the check stops at once with the accelerator's error (nothing is run on the CPU
in its place: a pass must mean the GPU paths ran).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedcogen import results_json
from fedcogen.accelerator import DeviceError, placement
from fedcogen.client.fl.lora_training import encode_examples, train_local
from fedcogen.lora_adapter import LoraSpec, lora_model
from fedcogen.provenance import provenance


@dataclass
class GpuCheckConfig:
    """What the check runs and where it writes (``<out>/gpu_check.json`` plus each stage's own folder)."""

    device: str = "cuda"
    out: str = "runs/gpu-check"
    stage_timeout_s: float = 900.0
    stages: tuple[str, ...] = ("probe", "demo", "federation", "bench_cogen")
    gpus_per_client: float = 0.25


STAGES = ("probe", "demo", "federation", "bench_cogen")


def require_cuda(setting: str) -> Any:
    """The CUDA placement, or a :class:`DeviceError` that says the check needs a CUDA device."""
    try:
        place = placement(setting)
    except DeviceError as exc:
        raise DeviceError(f"the GPU check needs a CUDA device: {exc}") from exc
    if place.device.type != "cuda":
        raise DeviceError(f"the GPU check needs a CUDA device; device {setting!r} resolves to {place.key} here")
    return place


def probe(setting: str) -> dict[str, Any]:
    """Tiny model + LoRA on the GPU: where the tensors are, their dtypes, two training steps."""
    import torch

    place = require_cuda(setting)
    torch.cuda.reset_peak_memory_stats(place.device)
    lm = lora_model("tiny", 0, LoraSpec(r=4, alpha=8, dropout=0.0), device=setting)
    base = next(p for n, p in lm.model.named_parameters() if "lora_" not in n)
    adapter = next(iter(lm.params.values()))
    data = encode_examples(lm.tokenizer, [("say hi", "hi there"), ("say bye", "bye now")] * 4, max_seq_len=64)
    result = train_local(lm, data, steps=2, batch_size=4, lr=1e-2, seed=0)
    return {
        "gpu": torch.cuda.get_device_name(place.device),
        "device": place.key,
        "base_dtype": str(base.dtype),
        "base_on": str(base.device),
        "adapter_dtype": str(adapter.dtype),
        "adapter_on": str(adapter.device),
        "train_loss": result.loss,
        "train_seconds": round(result.seconds, 3),
        "tokens_per_s": round(result.tokens_per_s, 1),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated(place.device) / 2**20, 1),
        "ok": base.device.type == "cuda" and adapter.dtype == torch.float32 and result.loss == result.loss,
    }


def stage_commands(cfg: GpuCheckConfig) -> dict[str, list[str]]:
    """The ``fedcogen`` command lines of stages 2-4 (what a user would type, with ``--device``)."""
    out = Path(cfg.out)
    cli = [sys.executable, "-m", "fedcogen.cli"]
    return {
        "demo": [*cli, "demo", "--quick", "--device", cfg.device, "--out", str(out), "--name", "demo-quick"],
        "federation": [*cli, "simulate", "--device", cfg.device, "--num-gpus-per-client", str(cfg.gpus_per_client),
                       "--rounds", "2", "--out-dir", str(out / "federation")],
        "bench_cogen": [*cli, "bench", "cogen", "--quick", "--device", cfg.device, "--out", str(out / "bench-cogen")],
    }


def figures(stage: str, out: Path) -> dict[str, Any]:
    """Headline figures a stage wrote (empty when its output file is missing)."""
    files = {"demo": out / "demo-quick" / "metrics.json", "federation": out / "federation" / "metrics.json",
             "bench_cogen": out / "bench-cogen" / "bench_cogen.json"}
    path = files[stage]
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if stage == "demo":
        return {"stage_seconds": data.get("stage_seconds"),
                "final_eval_loss": data.get("federation", {}).get("final_eval_loss")}
    if stage == "federation":
        return {k: data.get(k) for k in ("completed_rounds", "final_eval_loss", "bytes")}
    return {"torch_device": data.get("torch_device"), "aggregate_tokens_per_s": data.get("aggregate_tokens_per_s"),
            "targets": data.get("targets")}


def run_stage(stage: str, argv: list[str], out: Path, timeout_s: float) -> dict[str, Any]:
    """One command with a deadline; its output goes to ``<out>/<stage>.log``."""
    log_path = out / f"{stage}.log"
    started = time.perf_counter()
    with open(log_path, "w") as log:
        try:
            rc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s, check=False).returncode
        except subprocess.TimeoutExpired:
            rc = None
    row = {"command": " ".join(argv[2:]), "rc": rc, "seconds": round(time.perf_counter() - started, 1),
           "log": str(log_path), "figures": figures(stage, out)}
    row["ok"] = rc == 0
    if rc is None:
        row["error"] = f"timed out after {timeout_s:g} s"
    return row


def run_gpu_check(cfg: GpuCheckConfig) -> dict[str, Any]:
    """Run the stages, write ``gpu_check.json`` and return it; raises :class:`DeviceError` without CUDA."""
    unknown = set(cfg.stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown GPU check stage(s) {sorted(unknown)} (known: {', '.join(STAGES)})")
    require_cuda(cfg.device)  # before anything runs
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"config": asdict(cfg), "stages": {}}
    commands = stage_commands(cfg)
    for stage in cfg.stages:
        print(f"gpu-check: {stage} ...", flush=True)
        if stage == "probe":
            started = time.perf_counter()
            row = probe(cfg.device)
            row["seconds"] = round(time.perf_counter() - started, 1)
        else:
            row = run_stage(stage, commands[stage], out, cfg.stage_timeout_s)
        report["stages"][stage] = row
        print(f"gpu-check: {stage}: {'ok' if row['ok'] else 'FAILED'} {json.dumps(row, default=str)}", flush=True)
    report["ok"] = all(row["ok"] for row in report["stages"].values())
    report["provenance"] = provenance(settings=asdict(cfg))
    results_json.write(out / "gpu_check.json", report, indent=2, default=str)
    return report
