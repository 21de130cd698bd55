"""Generating a whole federation: per user a profile, canaries, history and tasks, in the chosen variety.

Apart from :mod:`fedcogen.dataset.generator` (the basic writer) and :mod:`fedcogen.dataset.rich` (the rich
one), so that each writer stays one concept and this loop (name uniqueness, canary uniqueness, user order)
is shared by both.
"""

from __future__ import annotations

from collections.abc import Iterable

from fedcogen.dataset.canaries import new_canary
from fedcogen.dataset.generator import make_history, make_profile, make_tasks, user_rng
from fedcogen.dataset.rich import make_rich_history, make_rich_profile, make_rich_tasks
from fedcogen.dataset.schema import (
    CANARY_PREFIXES,
    SPLITS,
    Federation,
    FederationConfig,
    TaskRecord,
    make_user_id,
)


def generate_federation(cfg: FederationConfig | None = None, *, progress: bool = False) -> Federation:
    """Generate the whole federation in memory (well under a second for the default 16 basic users)."""
    cfg = cfg or FederationConfig()
    rich = cfg.variety == "rich"
    ids = [make_user_id(i, cfg.n_users) for i in range(cfg.n_users)]
    iterator: Iterable[str] = ids
    if progress:
        from tqdm import tqdm

        iterator = tqdm(ids, desc="generating users", unit="user")
    profiles, history, canaries, planted_in = [], [], {}, {}
    tasks: dict[str, list[TaskRecord]] = {s: [] for s in SPLITS}
    taken_names: set[str] = set()
    all_canaries: set[str] = set()
    for uid in iterator:
        prof = (make_rich_profile if rich else make_profile)(uid, cfg.seed, taken_names)
        crng = user_rng(cfg.seed, uid, "canaries")
        mine: list[str] = []
        for prefix in crng.sample(CANARY_PREFIXES, cfg.canaries_per_user):
            c = new_canary(crng, prefix)
            while c in all_canaries:  # astronomically rare, but uniqueness is a promise
                c = new_canary(crng, prefix)
            all_canaries.add(c)
            mine.append(c)
        hist, planted = (make_rich_history if rich else make_history)(prof, cfg, mine)
        planted_ids = {t for ids_ in planted.values() for t in ids_}
        user_tasks = (make_rich_tasks if rich else make_tasks)(prof, cfg, hist, planted_ids)
        profiles.append(prof)
        history.extend(hist)
        canaries[uid] = mine
        planted_in[uid] = planted
        for s in SPLITS:
            tasks[s].extend(user_tasks[s])
    return Federation(config=cfg, profiles=profiles, history=history, tasks=tasks, canaries=canaries,
                      planted_in=planted_in)
