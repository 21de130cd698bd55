"""Which clients the server talks to each round: the training sample and the evaluation cohort.

Cross-device federated learning samples a few clients per round out of many (``clients_per_round``
much smaller than ``num_clients``). Evaluating *every* client every round would undo that: each
client that has not seen the last broadcasts needs a catch-up patch first (up to a dense adapter),
so the evaluation would cost more bytes and time than the training. The evaluation cohort is a fixed,
seeded sample of ``eval_clients`` clients (the same ones every round, so eval loss is comparable
across rounds and across runs with the same seed); once they have the first full broadcast, each
later evaluation costs them only the round's sparse delta.

Under DP the training sample is drawn from the secret generator (:func:`fedcogen.protocols.privacy.dp.secret_rng`)
instead of (seed, round): the accountant's amplification by subsampling assumes nobody but the
server knows who took part, so the sample must not be recomputable from the run seed, and the
released outputs do not name it (:func:`released_round_fields`). Without DP it stays seeded, so
runs are reproducible. The evaluation cohort is fixed and seeded either way: it is not the sample
the accountant amplifies (evaluation releases nothing into the model).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedcogen.protocols.privacy.dp import secret_rng

REDACTED = "not released under DP"


def train_sample(nodes: Mapping[int, str], k: int, seed: int, server_round: int, secret: bool = False) -> list[int]:
    """``k`` node ids drawn without replacement, independent of node ids.

    Seeded by (seed, round) unless ``secret`` (DP runs): then drawn from the OS CSPRNG, so nobody
    holding the run seed can tell who took part in a round.
    """
    by_client = {c: n for n, c in nodes.items()}
    ids = sorted(by_client)
    k = min(len(ids), max(1, k))
    rng = secret_rng() if secret else np.random.default_rng(np.random.SeedSequence([seed, server_round, 3]))
    chosen = sorted(rng.choice(len(ids), size=k, replace=False).tolist())
    return [by_client[ids[i]] for i in chosen]


def eval_cohort(client_ids: list[str] | set[str], n: int, seed: int) -> set[str] | None:
    """The fixed evaluation cohort (``None`` = every client): ``n`` clients by seed, stable across rounds."""
    ids = sorted(client_ids)
    if n <= 0 or n >= len(ids):
        return None
    rng = np.random.default_rng(np.random.SeedSequence([seed, 11]))
    return {ids[i] for i in rng.choice(len(ids), size=n, replace=False).tolist()}


def released_round_fields(sampled: list[str], failures: Mapping[str, str], secret: bool) -> dict[str, Any]:
    """What a round's metrics row says about its sample: the client ids, or under DP only counts.

    Failures keep one entry per failed client (the count is what reports use) with the client id
    replaced, so a row never names a sampled client when the sample is secret.
    """
    if not secret:
        return {"sampled": sorted(sampled), "failures": dict(failures)}
    return {"sampled": REDACTED, "sampled_count": len(sampled),
            "failures": {f"client {i + 1}": reason for i, reason in enumerate(sorted(failures.values()))}}
