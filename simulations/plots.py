"""Matplotlib (Agg) plots of federated runs: loss per round and loss per byte on the wire.

Why loss vs bytes: sparse updates trade accuracy per round for far fewer bytes; only a plot
against the *measured* cumulative bytes (from the ledger) shows which configuration reaches a
given loss with the least communication.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


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


def plot_runs(runs: Sequence[tuple[str, Mapping[str, Any]]], out_dir: str | Path) -> list[Path]:
    """``loss_vs_round.png`` and ``loss_vs_bytes.png`` for one or several labelled runs."""
    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, res in runs:
        s = _series(res)
        ax.plot(s["round"], s["eval_loss"], marker="o", label=f"{label} (val)")
        if len(runs) == 1 and s["train_loss"]:
            ax.plot(s["train_round"], s["train_loss"], marker="x", linestyle="--", label=f"{label} (train)")
    ax.set_xlabel("round")
    ax.set_ylabel("loss (target tokens)")
    ax.set_title("loss per round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "loss_vs_round.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, res in runs:
        s = _series(res)
        ax.plot([b / 1e6 for b in s["cum_bytes"]], s["eval_loss"], marker="o", label=label)
    ax.set_xlabel("cumulative bytes on the wire (MB, measured)")
    ax.set_ylabel("validation loss")
    ax.set_title("loss vs communication")
    ax.set_xscale("symlog", linthresh=1e-3)
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
