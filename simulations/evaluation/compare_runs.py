"""Paired per-user differences between variants of two ``fedcogen eval`` result files.

Why: on a shared 2-core machine the base device and the personalised device are cheaper to decode in two
runs (the base one can start before the adapter exists); greedy decoding makes each answer the same as in a
joint run, so the per-user means of the two files pair up exactly like the paired table of one run. Each
task set (``result["sets"]``) is compared on its own users; users missing from either file are left out
(and counted).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fedcogen.simulations.evaluation import metrics as m
from fedcogen.simulations.evaluation.evaluate import EvalConfig

COMPARED: tuple[str, ...] = ("rouge_l", "fact_recall", "foreign_facts", "repeat_4gram")


def _per_user(result: Mapping[str, Any], variant: str) -> Mapping[str, Mapping[str, Any]]:
    if variant not in result.get("per_user", {}):
        raise ValueError(f"variant {variant!r} is not in the result (has: {', '.join(result.get('per_user', {}))})")
    return result["per_user"][variant]


def compare_runs(a: Mapping[str, Any], variant_a: str, b: Mapping[str, Any], variant_b: str,
                 metrics: Sequence[str] = COMPARED, cfg: EvalConfig | None = None) -> dict[str, Any]:
    """set name -> {"users", "missing_users", "a", "b" (means with CIs), "paired" (a - b per metric)}, for each set
    of ``a`` (its ``sets``; the whole run as ``all`` when it has none)."""
    cfg = cfg or EvalConfig()
    ua, ub = _per_user(a, variant_a), _per_user(b, variant_b)
    sets = a.get("sets") or {"all": {"users": sorted(ua)}}
    out: dict[str, Any] = {}
    for name, part in sets.items():
        users = [u for u in part["users"] if u in ua and u in ub]
        row: dict[str, Any] = {"users": len(users), "missing_users": len(part["users"]) - len(users),
                               "a": {}, "b": {}, "paired": {}}
        for metric in metrics:
            va = {u: ua[u].get(metric) for u in users}
            vb = {u: ub[u].get(metric) for u in users}
            for key, vals in (("a", va), ("b", vb)):
                row[key][metric] = m.bootstrap_ci([v for v in vals.values() if v is not None],
                                                  resamples=cfg.resamples, confidence=cfg.confidence,
                                                  seed=cfg.seed).to_dict()
            row["paired"][metric] = m.paired_difference_ci(va, vb, names=(variant_a, variant_b, metric),
                                                           resamples=cfg.resamples, confidence=cfg.confidence,
                                                           seed=cfg.seed).to_dict()
        out[name] = row
    return out
