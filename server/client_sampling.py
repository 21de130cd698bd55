"""Which clients the server talks to each round: the training sample and the evaluation cohort.

Cross-device federated learning samples a few clients per round out of many (``clients_per_round``
much smaller than ``num_clients``). Evaluating *every* client every round would undo that: each
client that has not seen the last broadcasts needs a catch-up patch first (up to a dense adapter),
so the evaluation would cost more bytes and time than the training. The evaluation cohort is a fixed,
seeded sample of ``eval_clients`` clients (the same ones every round, so eval loss is comparable
across rounds and across runs with the same seed); once they have the first full broadcast, each
later evaluation costs them only the round's sparse delta.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def train_sample(nodes: Mapping[int, str], k: int, seed: int, server_round: int) -> list[int]:
    """``k`` node ids drawn without replacement, seeded by (seed, round), independent of node ids."""
    by_client = {c: n for n, c in nodes.items()}
    ids = sorted(by_client)
    k = min(len(ids), max(1, k))
    rng = np.random.default_rng(np.random.SeedSequence([seed, server_round, 3]))
    chosen = sorted(rng.choice(len(ids), size=k, replace=False).tolist())
    return [by_client[ids[i]] for i in chosen]


def eval_cohort(client_ids: list[str] | set[str], n: int, seed: int) -> set[str] | None:
    """The fixed evaluation cohort (``None`` = every client): ``n`` clients by seed, stable across rounds."""
    ids = sorted(client_ids)
    if n <= 0 or n >= len(ids):
        return None
    rng = np.random.default_rng(np.random.SeedSequence([seed, 11]))
    return {ids[i] for i in rng.choice(len(ids), size=n, replace=False).tolist()}
