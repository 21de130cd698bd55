"""The rules of the communication benchmark, as pure functions of measured curves and ledgers.

Why a module of its own: what makes the cost-to-target figure fair (when the dense baseline counts as
converged, which losses are compared, which bytes are counted, how a learning rate is chosen, how
seeds are summarised) is decided here once, tested without running a model, and quoted in the report.

* **Plateau** (:func:`plateau_at`): the dense run stops at the first evaluation at which the last
  ``window`` evaluations improved the best loss by less than ``min_gain`` of the improvement made so
  far (initial loss minus best loss). Relative to the improvement, not to the loss itself, so the rule
  reads the same on a random test model (loss ~10.8, improving by tenths) and on SmolLM2 (~2.7 -> ~1).
  A run that reaches its round cap first is reported as capped, never as converged.
* **Quality levels** (:func:`quality_levels`): with L0 the initial loss and Lb dense's best loss at the
  plateau, the level ``p`` is ``L0 - p (L0 - Lb)`` (the loss dense reaches after ``p`` of its total
  improvement), plus ``Lb * 1.01`` (dense's final quality within 1 %).
* **Bytes** (:func:`bytes_through`): every message both ways up to and including the round of the first
  evaluation at or below the level (query, train and evaluate messages, broadcast patches and catch-up
  chains inside them), from the server's ledger of serialized Flower messages; beside it FlowerTune's
  definition, FitIns + FitRes summed over rounds (the train phase only, both ways). A resumed run asks
  its nodes again (a query message per node, booked at round 0); only the first query of each node and
  direction is counted, which is what an uninterrupted run sends.
* **Learning rate** (:func:`pick_lr`): every run family (dense and each variant) gets the same sweep:
  each learning rate of the grid for the same number of rounds on the sweep seed; the lowest final
  validation loss wins (ties: the smaller rate).
* **Seeds** (:func:`interval`): mean and a two-sided Student-t 95 % interval over the seeds that
  reached a level (scipy's t quantile); the count of seeds that did not is reported beside it. Ratios
  are summarised in log space (geometric mean, interval ``exp(mean log +- t se)``): a ratio is a
  quotient, and an arithmetic interval of 3 ratios easily reaches below zero.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scipy import stats

Curve = Sequence[tuple[int, int, float]]  # (round, cumulative bytes, validation loss) at each evaluation


@dataclass(frozen=True)
class Level:
    """A quality level: its name (``"25%"``, ``"final+1%"``) and the loss that meets it."""

    name: str
    loss: float


def plateau_at(losses: Sequence[float], window: int, min_gain: float) -> int | None:
    """Index of the first evaluation at which the run counts as converged, or None.

    ``losses[0]`` is the evaluation before training. At index ``i >= window`` the run has plateaued when
    ``best(losses[:i-window+1]) - best(losses[:i+1]) < min_gain * (losses[0] - best(losses[:i+1]))``:
    the last ``window`` evaluations added less than ``min_gain`` of the improvement made so far. A run
    that has not improved at all never plateaus (it is reported as capped, not as converged).
    """
    if window < 1:
        raise ValueError(f"plateau window must be >= 1 evaluation (got {window})")
    if not 0 < min_gain < 1:
        raise ValueError(f"plateau min_gain must be in (0, 1) (got {min_gain})")
    for i in range(window, len(losses)):
        best_now = min(losses[: i + 1])
        improved = losses[0] - best_now
        if improved > 0 and min(losses[: i - window + 1]) - best_now < min_gain * improved:
            return i
    return None


def quality_levels(initial: float, best: float, fractions: Iterable[float], final_rel_gap: float = 0.01) -> list[Level]:
    """The losses to compare at: ``initial - p (initial - best)`` for each fraction ``p`` and ``best * (1 + gap)``."""
    if not best < initial:
        raise ValueError(f"dense did not improve (initial loss {initial:.4f}, best {best:.4f}): no quality levels")
    levels = []
    for p in fractions:
        if not 0 < p <= 1:
            raise ValueError(f"quality level fractions must be in (0, 1] (got {p})")
        levels.append(Level(f"{100 * p:g}%", initial - p * (initial - best)))
    levels.append(Level(f"final+{100 * final_rel_gap:g}%", best * (1 + final_rel_gap)))
    return levels


def curve(result: Mapping[str, Any]) -> list[tuple[int, int, float]]:
    """(round, cumulative bytes of every message, validation loss) at every evaluation of a run's metrics."""
    return [(int(r.get("round", i)), int(r["cum_bytes"]), float(r["eval_loss"])) for i, r in enumerate(result["rounds"])
            if isinstance(r.get("eval_loss"), float) and math.isfinite(r["eval_loss"])]


def first_round_at(points: Curve, loss: float) -> int | None:
    """Round of the first evaluation at or below ``loss`` (what the run really spent to get there), or None."""
    for rnd, _, lo in points:
        if lo <= loss:
            return rnd
    return None


def bytes_through(entries: Iterable[Mapping[str, Any]], last_round: int) -> dict[str, int]:
    """Bytes of the ledger's messages up to and including ``last_round``: both ways, per direction, and
    FlowerTune's FitIns + FitRes (train phase, both ways). Repeated queries of a node (a resumed run
    asks again) count once."""
    out = {"all": 0, "down": 0, "up": 0, "flowertune": 0, "flowertune_down": 0, "flowertune_up": 0}
    queried: set[tuple[Any, str]] = set()
    for e in entries:
        if int(e["round"]) > last_round:
            continue
        if e["phase"] == "query":
            key = (e.get("client_id") or e.get("node_id"), e["direction"])
            if key in queried:
                continue
            queried.add(key)
        b = int(e["bytes"])
        out["all"] += b
        out[e["direction"]] += b
        if e["phase"] == "train":
            out["flowertune"] += b
            out[f"flowertune_{e['direction']}"] += b
    return out


def cost_at(points: Curve, entries: Sequence[Mapping[str, Any]], level: Level) -> dict[str, Any]:
    """What one run spent to reach one level: the round and the bytes (None when it never did)."""
    rnd = first_round_at(points, level.loss)
    if rnd is None:
        return {"level": level.name, "loss": level.loss, "reached": False, "round": None, "bytes": None,
                "before_training": False}
    return {"level": level.name, "loss": level.loss, "reached": True, "round": rnd,
            "bytes": bytes_through(entries, rnd), "before_training": rnd == points[0][0]}


def ratio_at(dense: Mapping[str, Any], run: Mapping[str, Any], key: str = "all") -> float | None:
    """dense bytes / run bytes (``key``: all, down, up or flowertune) to one level, from two :func:`cost_at`
    records of the same seed; None when either did not reach it, or dense met it before training (a level
    at or above the initial loss, e.g. "final + 1 %" on a model whose loss improves by less than 1 %:
    nothing was learnt, there is no cost to compare)."""
    if not (dense["reached"] and run["reached"]) or dense["before_training"]:
        return None
    return dense["bytes"][key] / run["bytes"][key] if run["bytes"][key] > 0 else None


def pick_lr(final_losses: Mapping[float, float]) -> float:
    """The learning rate with the lowest final validation loss (ties: the smaller rate; NaN/inf lose)."""
    if not final_losses:
        raise ValueError("no sweep results to pick a learning rate from")
    finite = {lr: lo for lr, lo in final_losses.items() if math.isfinite(lo)}
    if not finite:
        raise ValueError(f"every learning rate of the sweep diverged: {dict(final_losses)}")
    return min(sorted(finite), key=lambda lr: finite[lr])


def interval(values: Sequence[float], confidence: float = 0.95, log: bool = False) -> dict[str, Any]:
    """Mean, two-sided Student-t interval, min and max of ``values`` (one value: no interval). With ``log``
    (positive values only) the mean is geometric and the interval is taken on the logs."""
    vals = [float(v) for v in values]
    if not vals:
        return {"n": 0, "mean": None, "lo": None, "hi": None, "min": None, "max": None, "log": log}
    if log and min(vals) <= 0:
        raise ValueError(f"a log-space interval needs positive values (got {vals})")
    xs = [math.log(v) for v in vals] if log else vals
    back = math.exp if log else float
    mean = statistics.fmean(xs)
    if len(vals) == 1:
        return {"n": 1, "mean": back(mean), "lo": None, "hi": None, "min": vals[0], "max": vals[0], "log": log}
    half = float(stats.t.ppf(0.5 + confidence / 2, len(xs) - 1)) * statistics.stdev(xs) / math.sqrt(len(xs))
    return {"n": len(vals), "mean": back(mean), "lo": back(mean - half), "hi": back(mean + half),
            "min": min(vals), "max": max(vals), "log": log}


__all__ = ["Level", "plateau_at", "quality_levels", "curve", "first_round_at", "bytes_through", "cost_at",
           "ratio_at", "pick_lr", "interval"]
