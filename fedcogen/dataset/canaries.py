"""Canaries: random secrets planted in a user's history for secret-sharer exposure experiments.

One place draws them (:func:`new_canary`), one place turns a federation's canaries into attack-ready
records (:func:`canary_records`) and one draws same-format alternatives (:func:`random_canary_like`).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from fedcogen.dataset.schema import (
    CANARIES_FILE,
    CANARY_ALPHABETS,
    CANARY_PATTERN,
    KIND_LABELS,
    Federation,
    user_ids,
)
from fedcogen.prompts import history_prompt


def new_canary(rng: random.Random, prefix: str) -> str:
    return f"{prefix} {_random_secret(rng)}"


def _random_secret(rng: random.Random) -> str:
    return "".join(rng.choice(CANARY_ALPHABETS[c]) if c in CANARY_ALPHABETS else c for c in CANARY_PATTERN)


def random_canary_like(canary: str | dict[str, Any], rng: Any) -> str | dict[str, Any]:
    """A different canary of the same format: same prefix, fresh secret drawn from the same alphabets.

    ``canary`` is a canary string (returns a canary string) or a record from :func:`canary_records`
    (returns ``{"text", "prefix", "secret"}`` for the alternative, which is what
    ``attacks.canary_exposure(..., alternatives_fn=random_canary_like)`` reads). ``rng`` is a
    ``random.Random`` or a ``numpy.random.Generator``. Used for secret-sharer exposure: rank the
    true canary among such alternatives (:data:`CANARY_SPACE_SIZE` possible secrets).
    """
    if isinstance(canary, dict):
        alt = random_canary_like(str(canary["text"]), rng)
        new_secret = alt.rpartition(" ")[2]
        return {"text": alt, "prefix": canary.get("prefix", canary_secret(alt)[0]), "secret": new_secret}
    prefix, sep, secret = canary.rpartition(" ")
    if not sep or len(secret) != len(CANARY_PATTERN) or not all(
        (s in CANARY_ALPHABETS[p]) if p in CANARY_ALPHABETS else s == p
        for s, p in zip(secret, CANARY_PATTERN, strict=True)
    ):
        raise ValueError(f"'{canary}' is not a canary of format '<prefix> {CANARY_PATTERN}'")
    numpy_like = hasattr(rng, "integers")
    for _ in range(100):
        chars = []
        for c in CANARY_PATTERN:
            alphabet = CANARY_ALPHABETS.get(c)
            if alphabet is None:
                chars.append(c)
            elif numpy_like:
                chars.append(alphabet[int(rng.integers(len(alphabet)))])
            else:
                chars.append(rng.choice(alphabet))
        new = "".join(chars)
        if new != secret:
            return f"{prefix} {new}"
    raise RuntimeError("could not draw a different secret (random generator is constant?)")


def canary_secret(canary: str) -> tuple[str, str]:
    """Split a canary into (prefix + trailing space, secret), e.g. for ``attacks.CanarySpec``."""
    prefix, _, secret = canary.rpartition(" ")
    return prefix + " ", secret


CANARY_PLANTING = "P.S. Note to self: {canary}."


def canary_records(fed: Federation) -> list[dict[str, Any]]:
    """One dict per canary, ready for ``fedcogen.simulations.privacy.attack_metrics.canary_exposure``.

    Keys: ``canary_id``, ``owner``, ``text`` (the canary), ``prefix`` (the history text it was first
    planted in, up to the secret: exposure is then measured on exactly the sequence the model was
    trained on), ``secret``, ``prompt`` (that text's training prompt) and ``planted_in`` (text ids).
    """
    by_id = {h.text_id: h for h in fed.history}
    out = []
    for owner in user_ids(fed):
        for j, canary in enumerate(fed.canaries.get(owner, [])):
            _, secret = canary_secret(canary)
            where = fed.planted_in.get(owner, {}).get(canary, [])
            planted = by_id.get(where[0]) if where else None
            if planted is not None:
                prefix = planted.text[: planted.text.index(canary)] + canary[: -len(secret)]
                prompt = history_prompt(KIND_LABELS[planted.kind])
            else:
                prefix, prompt = canary[: -len(secret)], None
            out.append({
                "canary_id": f"{owner}-c{j}", "owner": owner, "text": canary, "prefix": prefix, "secret": secret,
                "prompt": prompt, "planted_in": list(where),
            })
    return out


def load_canaries(folder: str | Path) -> dict[str, list[str]]:
    """``{user_id: [canary, ...]}`` from a federation folder's ``private/canaries.json``."""
    path = Path(folder) / CANARIES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"canary manifest not found: {path}")
    return dict(json.loads(path.read_text(encoding="utf-8"))["canaries"])
