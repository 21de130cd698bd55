"""Projection: the device's time per answer for ``draft_edit`` vs the device alone, when the cloud runs on
separate hardware.

Why a projection: on this 2-core machine the cloud's draft and the device's edit share the CPU, so a
measured latency charges the device with the cloud's work. On separate hardware the device pays only its
own forwards (the cloud drafts in parallel; its latency is reported apart). The device's cost is measured
here, not modelled: the time of ONE forward that appends ``k`` tokens on a KV cache of ``context_tokens``
(a ~300-token private context + instruction), for the block widths the edit uses. An evaluation's answers
(``fedcogen eval --json``, one file or one per variant; it records ``device_passes`` and ``device_fed`` per answer) then give what each
answer needed: device-only = passes x cost(1); draft_edit = passes x cost(mean width of its passes), the
cost interpolated between measured widths. The prefill is the same for both and left out.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedcogen.client.cogen.batch_lm import BatchLM
from fedcogen.models import load_model


@dataclass
class DraftEditBenchConfig:
    """What to measure: the device model, its context length, the block widths, repeats per width."""

    model: str = "smollm2-27l"
    context_tokens: int = 300
    widths: tuple[int, ...] = (1, 2, 4, 8, 12, 17)  # 17 = the written token + a full 16-token block
    repeats: int = 9
    device: str = "cpu"
    seed: int = 0

    def validate(self) -> None:
        if self.context_tokens < 1 or self.repeats < 1 or not self.widths or min(self.widths) < 1:
            raise ValueError(f"context_tokens, repeats and every width must be >= 1, got {self}")
        if 1 not in self.widths:
            raise ValueError("widths must include 1 (the device-only step)")


def forward_costs(lm: Any, cfg: DraftEditBenchConfig) -> dict[int, float]:
    """Median seconds of one forward appending ``k`` tokens on a ``context_tokens`` KV cache (batch of one).

    Each measurement appends, then retracts (the cache stays at the context's length, as a verifier that
    rejects); one unmeasured warm-up per width."""
    gen = torch.Generator().manual_seed(cfg.seed)
    vocab = lm.vocab_size
    batch = BatchLM(lm.model)
    batch.prefill([torch.randint(10, vocab, (cfg.context_tokens,), generator=gen).tolist()])
    out: dict[int, float] = {}
    for k in sorted(set(cfg.widths)):
        times = []
        for rep in range(cfg.repeats + 1):
            toks = torch.randint(10, vocab, (k,), generator=gen).tolist()
            t0 = time.perf_counter()
            batch.extend([toks])
            dt = time.perf_counter() - t0
            batch.retract(0, k)
            if rep:
                times.append(dt)
        out[k] = statistics.median(times)
    return out


def cost_of(costs: Mapping[int, float], width: float) -> float:
    """The forward cost at a (mean) width, linearly interpolated between the measured widths."""
    ks = sorted(costs)
    return float(np.interp(width, ks, [costs[k] for k in ks]))


def _scored(rows: Iterable[Mapping[str, Any]], variant: str) -> list[Mapping[str, Any]]:
    return [r for r in rows if r.get("variant") == variant and "error" not in r and not r.get("fell_back")]


def project(costs: Mapping[int, float], rows: Sequence[Mapping[str, Any]],
            variants: tuple[str, str] = ("device_personalised", "draft_edit")) -> dict[str, Any]:
    """Device-side seconds per answer and per token for the device alone and draft_edit, from an evaluation's
    per-answer counts and the measured forward costs."""
    base_name, edit_name = variants
    out: dict[str, Any] = {}
    for name in variants:
        rs = _scored(rows, name)
        if not rs:
            raise ValueError(f"the evaluation has no scored '{name}' answers to project")
        if any(not r.get("device_passes") for r in rs):
            raise ValueError(f"'{name}' answers carry no device_passes: evaluate with this code's `fedcogen eval`")
        per = []
        for r in rs:
            passes = int(r["device_passes"])
            fed = int(r.get("device_fed") or passes)
            per.append(passes * cost_of(costs, fed / passes))
        tokens = sum(int(r.get("tokens") or 0) for r in rs)
        passes = sum(int(r["device_passes"]) for r in rs)
        out[name] = {
            "answers": len(rs), "tokens": tokens, "passes": passes,
            "passes_per_token": passes / tokens if tokens else None,
            "mean_width": sum(int(r.get("device_fed") or r["device_passes"]) for r in rs) / passes,
            "device_s_per_answer": sum(per) / len(rs),
            "device_s_per_token": sum(per) / tokens if tokens else None,
        }
        drafted = sum(int(r.get("draft_tokens") or 0) for r in rs)
        if drafted:
            out[name]["draft_tokens"] = drafted
            out[name]["draft_acceptance"] = sum(int(r.get("draft_accepted") or 0) for r in rs) / drafted
    base, edit = out[base_name]["device_s_per_token"], out[edit_name]["device_s_per_token"]
    out["speedup_per_token"] = base / edit if base and edit else None
    return out


def run_draft_edit_bench(cfg: DraftEditBenchConfig, results: Sequence[Path] = ()) -> dict[str, Any]:
    """Measure the forward costs; with ``results`` (eval JSONs, e.g. one run per variant) also the projection."""
    cfg.validate()
    lm = load_model(cfg.model, seed=cfg.seed, device=cfg.device)
    costs = forward_costs(lm, cfg)
    out: dict[str, Any] = {
        "config": asdict(cfg), "threads": torch.get_num_threads(),
        "forward_s": {str(k): v for k, v in costs.items()},
        "cost_ratio_to_one_token": {str(k): v / costs[1] for k, v in costs.items()},
    }
    if results:
        rows = [r for path in results for r in json.loads(Path(path).read_text())["rows"]]
        out["results"] = [str(p) for p in results]
        out["projection"] = project(costs, rows)
    return out


def markdown(result: Mapping[str, Any]) -> str:
    """The forward costs and, if present, the projection as markdown tables."""
    lines = [f"forward of k tokens on a {result['config']['context_tokens']}-token KV cache "
             f"({result['config']['model']}, {result['threads']} threads)", "",
             "| k | seconds | x one token |", "|---|---|---|"]
    for k, s in result["forward_s"].items():
        lines.append(f"| {k} | {s:.4f} | {result['cost_ratio_to_one_token'][k]:.2f} |")
    proj = result.get("projection")
    if proj:
        lines += ["", "| variant | answers | tokens | passes/token | mean width | draft kept | device s/answer | "
                  "device s/token |", "|---|---|---|---|---|---|---|---|"]
        for name, p in proj.items():
            if not isinstance(p, dict):
                continue
            kept = p.get("draft_acceptance")
            lines.append(f"| {name} | {p['answers']} | {p['tokens']} | {p['passes_per_token']:.3f} | "
                         f"{p['mean_width']:.2f} | {'-' if kept is None else f'{kept:.1%}'} | "
                         f"{p['device_s_per_answer']:.3f} | {p['device_s_per_token']:.4f} |")
        lines += ["", f"projected device-side speed-up per token: {proj['speedup_per_token']:.2f}x"]
    return "\n".join(lines) + "\n"
