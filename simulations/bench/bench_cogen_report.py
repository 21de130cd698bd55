"""``bench_cogen.md``: the CoGenesis benchmark's tables (speed side by side, bytes vs agreement, batching)."""

from __future__ import annotations

import json
from typing import Any

SPEED_COLUMNS = ("device", "device_cloud_busy", "logit_per_token", "logit_speculative", "gated")


def _speed_table(speed: dict[str, Any]) -> list[str]:
    lines = ["| variant | tokens/s | x device | cloud tokens | round trips/token | B/token down | B/token up "
             "| ROUGE-L |", "|---|---|---|---|---|---|---|---|"]
    for name in SPEED_COLUMNS:
        r = speed[name]
        lines.append(f"| {name} | {r['tokens_per_s']:.2f} | {r['ratio_to_device']:.2f} | "
                     f"{100 * r['cloud_call_fraction']:.0f}% | {r['round_trips_per_token']:.2f} | "
                     f"{r['bytes_received_per_token']:.0f} | {r['bytes_sent_per_token']:.1f} | {r['rouge_l']:.3f} |")
    return lines


def cogen_report(result: dict[str, Any]) -> str:
    m0, m1 = result.get("machine_start", {}), result.get("machine_end", {})
    lines = [f"# CoGenesis benchmark ({result['mode']})", "",
             f"cloud model `{result['config']['cloud_model']}`; {m0.get('cpus')} CPUs, load average "
             f"{m0.get('load_avg_1_5_15')} at start, {m1.get('load_avg_1_5_15')} at end; threads {result['threads']}",
             "", "Speed figures are ratios measured side by side in this run (variants interleaved per task).", ""]
    for name, row in result["devices"].items():
        lines += [f"## device `{name}`", "", "### speed", ""] + _speed_table(row["speed"])
        g = row["speed"]["gated"]
        lines += ["", f"gated ROUGE-L loss vs always-fuse (speculative logit): "
                  f"{100 * g.get('quality_loss_vs_always_fuse', 0.0):+.1f}%", ""]
        w = row["wire"]
        lines += ["### bytes per token vs top-1 agreement with full-vocabulary fusion", "",
                  f"{w['positions']} teacher-forced positions; full fp32 baseline {w['full_fp32_bytes_per_token']} "
                  "B/token; the full-fusion choice lies outside the cloud's top-k at "
                  + ", ".join(f"k={k}: {100 * v:.1f}%" for k, v in w["fused_choice_outside_cloud_topk"].items())
                  + " of positions", "", "| encoding | k | B/token | agreement |", "|---|---|---|---|"]
        lines += [f"| {p['encoding']} | {p['k']} | {p['bytes_per_token']:.0f} | {100 * p['agreement']:.2f}% |"
                  for p in w["points"]]
        best = w.get("best_le_128B_ge_99.5pct")
        lines += ["", f"cheapest point with <= 128 B and >= 99.5%: {best if best else 'none'}", ""]
    lines += ["## cloud batching (cloud-only decoding sessions at once)", "", "| sessions | aggregate tokens/s |",
              "|---|---|"]
    lines += [f"| {n} | {v:.1f} |" for n, v in result["aggregate_tokens_per_s"].items()]
    if "long_context" in result:
        lines += ["", f"## long context (device prompts of {result.get('long_context_prompt_tokens')} tokens, "
                  f"{result['config']['long_tokens']} new tokens)", ""] + _speed_table(result["long_context"])
    lines += ["", "## targets", "", "```", json.dumps(result["targets"], indent=2), "```", ""]
    return "\n".join(lines)
