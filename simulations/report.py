"""Markdown report and plots for an evaluation, built from the JSON that ``fedcogen eval`` writes.

Working from the JSON dict (not live objects) means a report can be regenerated from a saved
run, and the report shows exactly what the JSON holds. Plots use matplotlib's Agg backend so
they work on headless machines and inside Ray workers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedcogen.simulations.metrics import MIN_USERS_TO_DISTINGUISH

SUMMARY_COLUMNS: tuple[tuple[str, str, int], ...] = (
    # (metric, column header, digits)
    ("rouge_l", "ROUGE-L F1", 3),
    ("fact_recall", "fact recall", 3),
    ("style_match", "style match", 3),
    ("leaked_facts", "leaked facts / answer", 2),
    ("bytes_total", "bytes on wire", 0),
    ("tokens_per_s", "tokens/s", 1),
    ("latency_s", "latency s", 2),
    ("cloud_call_fraction", "cloud-call fraction", 2),
)


def fmt_ci(ci: Mapping[str, Any] | None, digits: int) -> str:
    if not ci or not ci.get("n") or ci.get("mean") is None or math.isnan(ci["mean"]):
        return "n/a"
    mean, low, high = ci["mean"], ci["low"], ci["high"]
    if ci["n"] == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _plot_ready(result: Mapping[str, Any], metric: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for v in result["variants"]:
        ci = result["overall"].get(v, {}).get(metric)
        if ci and ci.get("n") and ci.get("mean") is not None and not math.isnan(ci["mean"]):
            out.append((v, ci))
    return out


def plot_quality_vs_bytes(result: Mapping[str, Any], path: Path, quality: str = "rouge_l") -> Path | None:
    """Scatter of mean quality (with CI bars) against mean bytes on the wire, one point per variant.

    The x axis is symlog because the device-only variant sends nothing while logit fusion sends
    kilobytes per token; a linear axis would squash everything but one point. Returns ``None``
    if no variant has both numbers.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q = dict(_plot_ready(result, quality))
    b = dict(_plot_ready(result, "bytes_total"))
    names = [v for v in result["variants"] if v in q and v in b]
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for v in names:
        y, x = q[v], b[v]
        yerr = [[y["mean"] - y["low"]], [y["high"] - y["mean"]]]
        xerr = [[x["mean"] - x["low"]], [x["high"] - x["mean"]]]
        ax.errorbar(x["mean"], y["mean"], yerr=yerr, xerr=xerr, fmt="o", capsize=3, label=v)
        ax.annotate(v, (x["mean"], y["mean"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xscale("symlog", linthresh=100)
    ax.set_xlabel("bytes on the wire per answer (sent + received)")
    ax.set_ylabel(f"{quality} (mean over users, 95% CI)")
    ax.set_title("Quality vs communication")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_latency(result: Mapping[str, Any], path: Path) -> Path | None:
    """Bar chart of mean latency per answer per variant with CI error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = _plot_ready(result, "latency_s")
    if not data:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    names = [v for v, _ in data]
    means = [ci["mean"] for _, ci in data]
    err = [[ci["mean"] - ci["low"] for _, ci in data], [ci["high"] - ci["mean"] for _, ci in data]]
    ax.bar(names, means, yerr=err, capsize=4, color="tab:blue", alpha=0.8)
    ax.set_ylabel("latency per answer, s (95% CI)")
    ax.set_title("Latency per variant")
    ax.tick_params(axis="x", rotation=20)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def summary_table(result: Mapping[str, Any], columns: Sequence[tuple[str, str, int]] = SUMMARY_COLUMNS) -> str:
    """Markdown table: one row per variant, mean [95% CI] over users for each metric."""
    head = "| variant | users | " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|---|---:|" + "---:|" * len(columns)
    lines = [head, sep]
    for v in result["variants"]:
        metrics = result["overall"].get(v, {})
        n = max((ci.get("n", 0) for ci in metrics.values()), default=0)
        cells = [fmt_ci(metrics.get(k), d) for k, _, d in columns]
        lines.append(f"| {v} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(result: Mapping[str, Any], metrics: Sequence[str] = ("rouge_l", "fact_recall",
                                                                       "leaked_facts")) -> str:
    """Markdown table of paired per-user differences (a - b) with CIs and a verdict."""
    rows = [p for p in result.get("paired", []) if p["metric"] in metrics]
    if not rows:
        return "_no paired comparisons (fewer than two variants, or no shared users)_"
    lines = ["| a | b | metric | users | mean(a - b) [95% CI] | distinguishable |", "|---|---|---|---:|---:|---|"]
    for p in rows:
        if p["distinguishable"]:
            verdict = "yes"
        elif p["n"] < MIN_USERS_TO_DISTINGUISH:
            verdict = f"too few users (< {MIN_USERS_TO_DISTINGUISH})"
        else:
            verdict = "no"
        lines.append(f"| {p['a']} | {p['b']} | {p['metric']} | {p['n']} | {fmt_ci(p, 3)} | {verdict} |")
    return "\n".join(lines)


def write_report(result: Mapping[str, Any], path: str | Path, title: str = "fedcogen evaluation") -> Path:
    """Write the markdown report to ``path`` and its PNG plots next to it; returns the report path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stem = path.with_suffix("")
    qb = plot_quality_vs_bytes(result, Path(f"{stem}_quality_vs_bytes.png"))
    lat = plot_latency(result, Path(f"{stem}_latency.png"))
    meta = result.get("meta", {})
    cfg = result.get("config", {})
    parts = [f"# {title}", ""]
    if meta:
        parts.append(", ".join(f"{k}: {v}" for k, v in meta.items() if not isinstance(v, dict | list)))
        parts.append("")
    parts += [
        "Means are taken per user first, then over users; intervals are "
        f"{int(100 * cfg.get('confidence', 0.95))}% percentile bootstrap intervals resampling users "
        f"({cfg.get('resamples', 1000)} resamples, seed {cfg.get('seed', 0)}). "
        "Leaked facts count the task's private facts found in what the cloud received (request bytes "
        "plus the token ids the device sent, decoded); a fact the cloud guessed itself and the device "
        "echoed back also counts, so this errs on the side of reporting a leak.",
        "",
        "## Summary",
        "",
        summary_table(result),
        "",
        "## Paired differences between variants",
        "",
        "Per-user differences a - b; a pair is *distinguishable* when the interval excludes 0 "
        f"and at least {MIN_USERS_TO_DISTINGUISH} users are paired.",
        "",
        paired_table(result),
        "",
    ]
    if result.get("notes"):
        parts += ["## Notes", "", *[f"- {n}" for n in result["notes"]], ""]
    skipped = result.get("invalid_lines") or []
    if skipped:
        parts += ["## Skipped input lines", "", *[f"- {s}" for s in skipped[:50]]]
        if len(skipped) > 50:
            parts.append(f"- ... and {len(skipped) - 50} more")
        parts.append("")
    parts += ["## Plots", ""]
    if qb:
        parts.append(f"![quality vs bytes]({qb.name})")
    if lat:
        parts.append(f"![latency]({lat.name})")
    if not (qb or lat):
        parts.append("_no plottable numbers_")
    path.write_text("\n".join(parts) + "\n")
    return path
