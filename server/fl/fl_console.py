"""What a federated run shows on the console: the progress bar, per-round log lines, short client errors."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

log = logging.getLogger("fedcogen.server")


def error_summary(reason: str) -> str:
    """The useful line of a client error (Ray wraps the exception in a long traceback)."""
    lines = [ln.strip() for ln in str(reason).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "Exception" in ln or "failure" in ln:
            return ln[-300:]
    return (lines[-1] if lines else "unknown error")[-300:]


def progress(rounds: range, done: int, total: int) -> Iterable[int]:
    try:
        from tqdm import tqdm

        return tqdm(rounds, desc="federated rounds", initial=done, total=total, unit="round")
    except ImportError:  # pragma: no cover
        return rounds


def log_round(entry: Mapping[str, Any], rounds: int) -> None:
    """The one line per finished round (what the demo and ``fedcogen simulate`` print live)."""
    log.info(
        "round %d/%d: train loss %.4f, eval loss %s, accepted %d, rejected %s, failures %d, "
        "up %d B, down %d B", entry["round"], rounds, entry["train_loss"],
        f"{entry['eval_loss']:.4f}" if "eval_loss" in entry else "-", entry["accepted"],
        entry["rejected"] or "{}", len(entry["failures"]), entry["bytes_up"], entry["bytes_down"],
    )


def show_progress_lines() -> None:
    """Let the per-round lines reach the run's log when Flower runs this app in its own process.

    Flower configures only its ``flwr`` logger there, so fedcogen's INFO lines would be dropped;
    nothing is added when the embedding process already logs (``fedcogen simulate``, tests).
    """
    ours = logging.getLogger("fedcogen")
    if ours.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
