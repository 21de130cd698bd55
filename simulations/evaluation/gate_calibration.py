"""Calibrate the ``gated`` variant's uncertainty gate on validation tasks (``fedcogen gate calibrate``).

Why a measurement and not a guess: how often a device model is "uncertain" depends on the model (a
pruned 24-layer SmolLM2 has ~3 nats of entropy on most tokens; a full one much less), so a fixed
entropy threshold calls the cloud for 80% of tokens on one device and 5% on another. The gate's job is
to call the cloud only where fusion changes the outcome.

Method: on the synthetic federation's *validation* tasks (never the test tasks the benchmark and
``fedcogen eval`` report), teacher-force the reference answer through the device (with the private
context) and the cloud (bare instruction, distributions through the same wire codec the device
receives). At every position we know the device-alone and the fused distribution, so for any gate
(metric + threshold) the gated distribution is fused where the gate fires and device-alone elsewhere.
Quality = mean negative log-likelihood of the reference tokens (lower is better) and top-1 accuracy;
the loss is relative to always-fuse. The chosen gate is the metric and threshold with the fewest cloud
calls whose NLL is at most ``max_quality_loss`` worse than always-fuse, among gates calling the cloud
for at most ``max_call_fraction`` of tokens. End-to-end generations with the chosen gate are compared
side by side with always-fuse in ``fedcogen bench cogen`` (ROUGE-L, tokens/s, cloud calls).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from fedcogen import results_json
from fedcogen.client.cogen.fusion import entropy, fuse_logprobs, top2_margin
from fedcogen.client.cogen.incremental_lm import IncrementalLM
from fedcogen.dataset import FederationConfig, generate_federation
from fedcogen.models import chat_input_ids, check_tokenizers_match, shared_model
from fedcogen.prompts import CLOUD_SYSTEM, DEVICE_SYSTEM, cloud_prompt, device_prompt
from fedcogen.protocols.codecs import logit_codec
from fedcogen.provenance import provenance


@dataclass
class CalibrationConfig:
    device_model: str = "smollm2-24l"
    cloud_model: str = "smollm2"
    users: int = 6
    tasks_per_user: int = 3
    max_tokens: int = 96
    seed: int = 0
    k: int = 64
    encoding: str = "fp16"
    weight: float = 0.5
    max_call_fraction: float = 0.2
    max_quality_loss: float = 0.01


def validation_tasks(cfg: CalibrationConfig) -> list[dict[str, str]]:
    fed = generate_federation(FederationConfig(n_users=cfg.users, seed=cfg.seed, history_per_user=4,
                                               train_tasks_per_user=0, val_tasks_per_user=cfg.tasks_per_user,
                                               test_tasks_per_user=0))
    return [{"instruction": t.instruction, "private_context": t.private_context, "reference": t.reference}
            for t in fed.tasks["val"]]


def position_stats(cfg: CalibrationConfig, tasks: list[dict[str, str]]) -> dict[str, torch.Tensor]:
    """Per reference position: the device's entropy and margin, NLL and top-1 hit alone and fused."""
    dev, cloud = shared_model(cfg.device_model, cfg.seed), shared_model(cfg.cloud_model, cfg.seed)
    check_tokenizers_match(dev.tokenizer, cloud.tokenizer)
    small, large = IncrementalLM(dev.model), IncrementalLM(cloud.model)
    cols: dict[str, list[torch.Tensor]] = {k: [] for k in ("entropy", "margin", "nll_device", "nll_fused",
                                                             "hit_device", "hit_fused")}
    for t in tasks:
        ref = dev.tokenizer(t["reference"], add_special_tokens=False)["input_ids"][: cfg.max_tokens]
        if not ref:
            continue
        y = torch.tensor(ref)
        lp_s = small.teacher_forced(chat_input_ids(dev.tokenizer, device_prompt(t["instruction"], t["private_context"]),
                                                   DEVICE_SYSTEM), ref)
        lp_l = large.teacher_forced(chat_input_ids(cloud.tokenizer, cloud_prompt(t["instruction"]), CLOUD_SYSTEM), ref)
        wire = torch.stack([logit_codec.decode(logit_codec.encode(row, cfg.k, cfg.encoding)) for row in lp_l])
        fused = fuse_logprobs(lp_s, wire, cfg.weight)
        rows = torch.arange(len(ref))
        cols["entropy"].append(entropy(lp_s))
        cols["margin"].append(top2_margin(lp_s))
        cols["nll_device"].append(-lp_s[rows, y])
        cols["nll_fused"].append(-fused[rows, y])
        cols["hit_device"].append((lp_s.argmax(-1) == y).float())
        cols["hit_fused"].append((fused.argmax(-1) == y).float())
    return {k: torch.cat(v) for k, v in cols.items()}


def sweep(stats: dict[str, torch.Tensor], metric: str, fractions: list[float]) -> list[dict[str, float]]:
    """Gates of one metric that call the cloud for each of ``fractions`` of the positions."""
    score = stats["entropy"] if metric == "entropy" else -stats["margin"]  # higher = more uncertain
    base_nll = float(stats["nll_fused"].mean())
    out = []
    for frac in fractions:
        q = float(torch.quantile(score, 1.0 - frac)) if frac > 0 else float("inf")
        fire = score >= q if frac > 0 else torch.zeros_like(score, dtype=torch.bool)
        nll = float(torch.where(fire, stats["nll_fused"], stats["nll_device"]).mean())
        hit = float(torch.where(fire, stats["hit_fused"], stats["hit_device"]).mean())
        threshold = q if metric == "entropy" else -q
        out.append({"metric": metric, "threshold": threshold, "call_fraction": float(fire.float().mean()),
                    "nll": nll, "quality_loss": (nll - base_nll) / base_nll, "top1": hit})
    return out


def calibrate(cfg: CalibrationConfig, out_dir: str | Path | None = None) -> dict[str, Any]:
    tasks = validation_tasks(cfg)
    stats = position_stats(cfg, tasks)
    fractions = [0.0, 0.02, 0.05, 0.08, 0.1, 0.12, 0.15, 0.195, 0.25, 0.3, 0.4, 0.5, 0.7, 0.9, 1.0]
    curve = sweep(stats, "entropy", fractions) + sweep(stats, "margin", fractions)
    ok = [g for g in curve if g["call_fraction"] <= cfg.max_call_fraction + 1e-9
          and g["quality_loss"] <= cfg.max_quality_loss]
    capped = [g for g in curve if g["call_fraction"] <= cfg.max_call_fraction + 1e-9]
    chosen = min(ok, key=lambda g: (g["call_fraction"], g["quality_loss"])) if ok else \
        min(capped, key=lambda g: g["quality_loss"])
    result = {
        "config": asdict(cfg),
        "positions": int(stats["entropy"].numel()),
        "tasks": len(tasks),
        "always_fuse": {"nll": float(stats["nll_fused"].mean()), "top1": float(stats["hit_fused"].mean())},
        "device_alone": {"nll": float(stats["nll_device"].mean()), "top1": float(stats["hit_device"].mean())},
        "curve": curve,
        "chosen": chosen,
        "target_met": bool(ok),
        "provenance": provenance(settings=asdict(cfg), seeds={"seed": cfg.seed}),
    }
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        results_json.write(out / "gate_calibration.json", result, indent=2)
    return result
