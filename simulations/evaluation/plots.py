"""Every matplotlib (Agg) plot of fedcogen: federated runs, evaluations, the demo and the privacy run.

Why loss vs bytes: sparse updates trade accuracy per round for far fewer bytes; only a plot
against the *measured* cumulative bytes (from the ledger) shows which configuration reaches a
given loss with the least communication. Plots are drawn from the result dicts the runs write as
JSON, so they can be redrawn from a saved run; the Agg backend works on headless machines and
inside Ray workers.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedcogen.simulations.evaluation.metrics import overall_mean
from fedcogen.variants import REPORT_ORDER


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(result: Mapping[str, Any]) -> dict[str, list[float]]:
    rounds = [m for m in result["rounds"] if "eval_loss" in m]
    return {
        "round": [m["round"] for m in rounds],
        "eval_loss": [m["eval_loss"] for m in rounds],
        "cum_bytes": [m.get("cum_bytes", 0) for m in rounds],
        "train_round": [m["round"] for m in result["rounds"] if "train_loss" in m],
        "train_loss": [m["train_loss"] for m in result["rounds"] if "train_loss" in m],
    }


def _run_style(plt: Any, i: int, n: int) -> dict[str, Any]:
    """The first run (the reference, e.g. dense) in black; the others from a 20-colour map once the default
    10-colour cycle would repeat, so every curve of a long comparison keeps its own colour."""
    if i == 0:
        return {"color": "black", "linewidth": 2}
    cmap = plt.get_cmap("tab20" if n > 10 else "tab10")
    return {"color": cmap((i - 1) % cmap.N), "linestyle": "-" if i % 2 else "--"}


def plot_runs(runs: Sequence[tuple[str, Mapping[str, Any]]], out_dir: str | Path,
              target_loss: float | None = None) -> list[Path]:
    """``loss_vs_round.png`` and ``loss_vs_bytes.png`` for one or several labelled runs (with an optional
    horizontal line at the loss a comparison aims for)."""
    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, res) in enumerate(runs):
        s = _series(res)
        ax.plot(s["round"], s["eval_loss"], marker="o", label=f"{label} (val)", **_run_style(plt, i, len(runs)))
        if len(runs) == 1 and s["train_loss"]:
            ax.plot(s["train_round"], s["train_loss"], marker="x", linestyle="--", label=f"{label} (train)")
    if target_loss:
        ax.axhline(target_loss, color="grey", linestyle=":", linewidth=1, label="target (dense + 1 %)")
    ax.set_xlabel("round")
    ax.set_ylabel("loss (target tokens)")
    ax.set_title("loss per round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "loss_vs_round.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5) if len(runs) > 6 else (6, 4))
    for i, (label, res) in enumerate(runs):
        s = _series(res)
        ax.plot([b / 1e6 for b in s["cum_bytes"]], s["eval_loss"], marker="o", label=label,
                **_run_style(plt, i, len(runs)))
    if target_loss:
        ax.axhline(target_loss, color="grey", linestyle=":", linewidth=1, label="target (dense + 1 %)")
    ax.set_xlabel("cumulative bytes on the wire, every message (MB, measured)")
    ax.set_ylabel("validation loss")
    ax.set_title("loss vs communication")
    ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "loss_vs_bytes.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def plot_federation(result: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Plots of one run (drawn by the simulation driver from the ServerApp's metrics)."""
    return plot_runs([(f"density {result['settings'].get('density')}", result)], out_dir)


# --------------------------------------------------------------------------- evaluation


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
    plt = _plt()

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
    plt = _plt()

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


# --------------------------------------------------------------------------- demo


def demo_plots(run_dir: Path, metrics: dict[str, Any]) -> list[str]:
    """Validation loss per round (measured sparse run only: no dense curve is drawn that was not run)
    and per-variant quality against bytes on the wire."""
    plt = _plt()

    names = []
    fed_plot = run_dir / "federation" / "loss_vs_round.png"
    if fed_plot.is_file():
        shutil.copy(fed_plot, run_dir / fed_plot.name)
        names.append(fed_plot.name)
    rounds = [r for r in metrics["federation"]["rounds"] if "eval_loss" in r]
    if rounds:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["cum_bytes"] for r in rounds], [r["eval_loss"] for r in rounds], "o-", label="sparse (measured)")
        ax.set_xlabel("cumulative bytes on the wire (every message, both ways)")
        ax.set_ylabel("validation loss (private tasks)")
        ax.set_title("federated training: loss vs bytes")
        ax.legend()
        fig.tight_layout()
        fig.savefig(run_dir / "loss_vs_bytes.png", dpi=110)
        plt.close(fig)
        names.append("loss_vs_bytes.png")
    overall = metrics["evaluation"]["all_users"]["overall"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for v in REPORT_ORDER:
        if v not in overall:
            continue
        x = max(1.0, overall_mean(overall, v, "bytes_total"))
        c = overall[v]["fact_recall"]
        ax.errorbar([x], [c["mean"]], yerr=[[c["mean"] - c["low"]], [c["high"] - c["mean"]]], fmt="o", capsize=3)
        ax.annotate(v, (x, c["mean"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("bytes on the wire per answer (device-only variants drawn at 1)")
    ax.set_ylabel("private-fact recall (95% CI over users)")
    ax.set_title("what each variant gets for its bytes")
    fig.tight_layout()
    fig.savefig(run_dir / "recall_vs_bytes.png", dpi=110)
    plt.close(fig)
    names.append("recall_vs_bytes.png")
    return names


# --------------------------------------------------------------------------- privacy run


def privacy_plots(result: dict[str, Any], out: Path) -> list[str]:
    """epsilon vs eval loss and canary exposure vs epsilon (no-DP drawn at the right edge as 'inf')."""
    plt = _plt()

    rows = result["sweep"]
    finite = [r["epsilon"] for r in rows if r["epsilon"] is not None]
    inf_x = (max(finite) * 1.5 if finite else 1.0)
    xs = [r["epsilon"] if r["epsilon"] is not None else inf_x for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].plot(xs, [r["utility_eval_loss"] for r in rows], "o-")
    axes[0].set_xlabel("epsilon (no DP drawn at right edge)")
    axes[0].set_ylabel("validation loss")
    axes[0].set_title("privacy vs utility")
    axes[1].plot(xs, [r["canary_exposure"]["mean"] for r in rows], "o-", label="mean exposure")
    axes[1].axhline(rows[0]["canary_exposure"]["chance"], color="gray", ls="--", label="chance")
    axes[1].plot(xs, [r["mia"]["auc"] * 10 for r in rows], "s:", label="MIA AUC x10")
    axes[1].set_xlabel("epsilon (no DP drawn at right edge)")
    axes[1].set_ylabel("bits")
    axes[1].set_title("canary exposure vs epsilon")
    axes[1].legend()
    for ax in axes:
        for x, r in zip(xs, rows, strict=True):
            ax.annotate(f"σ={r['noise_multiplier']:g}", (x, ax.get_ylim()[0]), fontsize=7, ha="center")
    fig.tight_layout()
    path = out / "privacy_utility.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path.name]
