"""The CoGenesis context-leakage attacker: an adversary on the cloud's view of each user.

Given the cloud's view of each user (all text it can decode from requests, see
:func:`fedcogen.simulations.privacy.audit.cloud_view_text`), it guesses each private attribute from its
public pool of candidates, by (a) exact substring match and (b) an attacker language model (the
cloud model) that scores ``"<view>\\n<question> <candidate>"`` and picks the candidate that the view
makes most likely *relative to* the same question without the view (contextual calibration, so the
model's prior preference for common names does not count as leakage). Reported as top-1 accuracy
vs chance. The verifier counterpart is :func:`fedcogen.simulations.privacy.audit.wire_audit`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedcogen.dataset import pools as d
from fedcogen.simulations.privacy.attack_metrics import sequence_nll
from fedcogen.text_match import contains_normalised, normalise

#: Question asked to the attacker model per attribute (the candidate is appended after a space).
ATTRIBUTE_QUESTIONS: dict[str, str] = {
    "first_name": "The user's first name is",
    "last_name": "The user's surname is",
    "city": "The user lives in",
    "role": "The user works as a",
    "manager": "The user's manager is called",
    "employer": "The user works at",
    "condition": "The user has",
    "medication": "The user takes",
    "money_item": "The user is dealing with a",
}


def profile_attributes(profile: Any) -> dict[str, str]:
    """The guessable single-valued attributes of a generated ``UserProfile`` (or a dict of them)."""
    if isinstance(profile, Mapping):
        return {k: str(v) for k, v in profile.items() if k in ATTRIBUTE_QUESTIONS}
    out = {
        "first_name": profile.first_name,
        "last_name": profile.last_name,
        "city": profile.city,
        "role": profile.role,
        "manager": profile.manager,
        "employer": profile.employer,
        "condition": profile.health.get("condition", ""),
        "medication": profile.health.get("medication", ""),
        "money_item": profile.money.get("item", ""),
    }
    return {k: v for k, v in out.items() if v}


def attribute_pools() -> dict[str, list[str]]:
    """Candidate pools of the synthetic data generator (what an attacker knowing the format would try)."""

    return {
        "first_name": list(d.GIVEN_NAMES),
        "last_name": list(d.SURNAMES),
        "city": list(d.CITIES),
        "role": list(d.ROLES),
        "manager": list(d.GIVEN_NAMES),
        "employer": [f"{a} {b}" for a in d.EMPLOYER_PREFIXES for b in d.EMPLOYER_SUFFIXES],
        "condition": [c for c, _ in d.HEALTH],
        "medication": [m for _, m in d.HEALTH],
        "money_item": list(d.MONEY_ITEMS),
    }


def _substring_guess(view_norm: str, pool: Sequence[str]) -> str | None:
    found = [(view_norm.count(normalise(c)), c) for c in pool if contains_normalised(view_norm, c)]
    if not found:
        return None
    found.sort(key=lambda x: (-x[0], -len(x[1])))
    return found[0][1]


def _candidate_nll(model: Any, tokenizer: Any, context_ids: list[int], pool: Sequence[str], batch_size: int) -> np.ndarray:
    items = []
    for c in pool:
        cand = tokenizer(" " + c, add_special_tokens=False)["input_ids"]
        items.append((list(context_ids) + cand, [-100] * len(context_ids) + cand))
    return sequence_nll(model, tokenizer, items, batch_size=batch_size, mean=False)


def context_leakage(
    views: Mapping[str, str],
    truths: Mapping[str, Mapping[str, str]],
    pools: Mapping[str, Sequence[str]] | None = None,
    *,
    model: Any | None = None,
    tokenizer: Any | None = None,
    max_view_tokens: int = 384,
    batch_size: int = 16,
    fields: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Top-1 attribute-inference accuracy of a cloud adversary from its view of each user.

    ``views``: user id -> text the cloud received (:func:`cloud_view_text`); ``truths``: user id ->
    attribute -> true value (:func:`profile_attributes`); ``pools``: attribute -> candidates
    (default :func:`attribute_pools`). ``substring`` guesses the most frequent pool value found in
    the view (no guess = wrong); ``model`` (if a model is given) picks the candidate with the largest
    log-likelihood gain from the view. Also reports the fraction of true values that appear verbatim.
    """
    pools = dict(pools or attribute_pools())
    attrs = list(fields or [f for f in ATTRIBUTE_QUESTIONS if f in pools])
    null_cache: dict[str, np.ndarray] = {}
    rows = []
    for uid, truth in truths.items():
        view = views.get(uid, "")
        view_norm = normalise(view)
        view_ids: list[int] = []
        if model is not None and tokenizer is not None and view:
            view_ids = tokenizer(view, add_special_tokens=False)["input_ids"][-max_view_tokens:]
        for attr in attrs:
            if attr not in truth or attr not in pools:
                continue
            pool = list(dict.fromkeys(pools[attr]))
            true = truth[attr]
            if true not in pool:
                pool.append(true)
            row: dict[str, Any] = {
                "user_id": uid, "attribute": attr, "chance": 1.0 / len(pool),
                "verbatim": contains_normalised(view_norm, true),
            }
            guess = _substring_guess(view_norm, pool)
            row["substring_correct"] = guess == true
            if model is not None and tokenizer is not None:
                q_ids = tokenizer(ATTRIBUTE_QUESTIONS.get(attr, f"The user's {attr} is"), add_special_tokens=False)[
                    "input_ids"
                ]
                if attr not in null_cache:
                    null_cache[attr] = _candidate_nll(model, tokenizer, q_ids, pool, batch_size)
                if view_ids:
                    nl = tokenizer("\n", add_special_tokens=False)["input_ids"]
                    with_view = _candidate_nll(model, tokenizer, view_ids + nl + q_ids, pool, batch_size)
                    gain = null_cache[attr] - with_view
                    row["model_correct"] = pool[int(np.argmax(gain))] == true
                else:
                    row["model_correct"] = False  # nothing seen: a guess from the prior is chance
            rows.append(row)

    def acc(key: str, subset: list[dict[str, Any]]) -> float | None:
        vals = [r[key] for r in subset if key in r]
        return float(np.mean(vals)) if vals else None

    per_attr = {
        a: {
            "substring_top1": acc("substring_correct", [r for r in rows if r["attribute"] == a]),
            "model_top1": acc("model_correct", [r for r in rows if r["attribute"] == a]),
            "verbatim": acc("verbatim", [r for r in rows if r["attribute"] == a]),
            "chance": acc("chance", [r for r in rows if r["attribute"] == a]),
        }
        for a in attrs
    }
    return {
        "n_users": len(truths),
        "n_guesses": len(rows),
        "substring_top1": acc("substring_correct", rows),
        "model_top1": acc("model_correct", rows),
        "verbatim_rate": acc("verbatim", rows),
        "chance": acc("chance", rows),
        "per_attribute": per_attr,
    }
