"""Privacy invariants of a generated federation: no private value in an instruction, canaries only in
their owner's history."""

from __future__ import annotations

import re

from fedcogen.dataset.schema import SPLITS, Federation, user_ids
from fedcogen.text_match import normalise


# --------------------------------------------------------------------------- leak checks
def private_values(fed: Federation, user_id: str, include_canaries: bool = True) -> list[str]:
    """Every private value of a user (profile values, plus canaries unless excluded)."""
    vals = list(fed.profile(user_id).private_values)
    return vals + (list(fed.canaries.get(user_id, [])) if include_canaries else [])


def find_leaks(fed: Federation) -> list[str]:
    """Privacy invariants of the generated data; returns one line per violation (empty = clean).

    * no private value of *any* user occurs in *any* instruction (normalised substring match, the
      strictest reading: the evaluation's wire leak check uses the same normalisation);
    * every canary occurs in its owner's history and in no other text (other users' history, any
      task field of any split).
    """
    problems = []
    values = sorted({normalise(v) for uid in user_ids(fed) for v in private_values(fed, uid)} - {""}, key=len,
                    reverse=True)
    pattern = re.compile("|".join(re.escape(v) for v in values)) if values else None
    for split in SPLITS:
        for t in fed.tasks[split]:
            m = pattern.search(normalise(t.instruction)) if pattern else None
            if m:
                problems.append(f"{t.task_id}: instruction contains private value '{m.group(0)}'")
    for owner, cans in fed.canaries.items():
        for c in cans:
            if not any(c in h.text for h in fed.history if h.user_id == owner):
                problems.append(f"canary of {owner} '{c}' is not in its owner's history")
            for h in fed.history:
                if h.user_id != owner and c in h.text:
                    problems.append(f"canary of {owner} appears in {h.text_id} of another user")
            for split in SPLITS:
                for t in fed.tasks[split]:
                    if any(c in s for s in (t.instruction, t.private_context, t.reference, *t.private_facts)):
                        problems.append(f"canary of {owner} appears in task {t.task_id}")
    return problems
