"""Training views of one user's data: (prompt, target) pairs, counterfactual copies, HF datasets."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

from fedcogen.dataset.generator import article, make_profile
from fedcogen.dataset.rich import make_rich_profile, rich_fake_fields
from fedcogen.dataset.schema import KIND_LABELS, Federation, HistoryText, TaskRecord, UserProfile, split_tasks
from fedcogen.prompts import device_prompt, history_prompt


# --------------------------------------------------------------------------- training / HF views
def client_examples(fed: Federation, user_id: str, split: str = "train",
                    history: bool = True, fact_swaps: int = 0) -> list[tuple[str, str]]:
    """(prompt, target) pairs for causal-LM training on one user's private data.

    ``split="train"``: the train tasks (prompt = ``device_prompt(instruction, private_context)``,
    target = reference), preceded, if ``history``, by the user's history texts (prompt =
    ``history_prompt(kind label)``, target = the text, canaries included), followed by ``fact_swaps``
    counterfactual copies of each task (:func:`swap_private_values`). Other splits: only that split's
    tasks (no history, no copies).
    """
    profile = fed.profile(user_id)  # raises a clear error for unknown users
    pairs: list[tuple[str, str]] = []
    if split == "train" and history:
        pairs += [(history_prompt(KIND_LABELS[h.kind]), h.text) for h in fed.history_of(user_id)]
    tasks = fed.tasks_of(user_id, split)
    pairs += [(device_prompt(t.instruction, t.private_context), t.reference) for t in tasks]
    if split == "train":
        for copy in range(fact_swaps):
            for i, t in enumerate(tasks):
                context, reference = swap_private_values(t, profile, fed.config.seed * 1000 + copy * 997 + i)
                pairs.append((device_prompt(t.instruction, context), reference))
    return pairs


def _fields(p: UserProfile, n_rel: int, n_sched: int, n_hobbies: int) -> list[str]:
    """A profile's private values in a fixed field order (list fields padded by cycling)."""
    def cyc(items: list, i: int) -> Any:
        return items[i % len(items)]

    out = [p.name, p.first_name, p.last_name, p.city, p.employer, article(p.role), p.role, p.manager,
           p.health["condition"], p.health["medication"], p.money["item"], p.money["amount"]]
    out += [cyc(p.relatives, i)["name"] for i in range(n_rel)]
    for i in range(n_sched):
        a = cyc(p.schedule, i)
        out += [a["with"], f"{a['day']} at {a['time']}"]
    return out + [cyc(p.hobbies, i) for i in range(n_hobbies)] + rich_fake_fields(p)


def swap_private_values(task: TaskRecord, profile: UserProfile, seed: int) -> tuple[str, str]:
    """A counterfactual copy of a task: every private value of its user replaced, the same way in the
    context and in the reference, by the matching value of a freshly drawn (fake) profile.

    Why: a user's tasks repeat the same facts, so local training can lower the loss by memorising
    them ("this user lives in Malmo") instead of reading them from the context, and that does not
    carry over to users the model never saw (measured: docs/personalisation.md). In a counterfactual
    copy the memorised value is wrong and only the context has the right one, so copying is what
    training rewards. Runs on the device, on the device's own data; nothing leaves it.
    """
    shape = (len(profile.relatives), len(profile.schedule), len(profile.hobbies))
    real = _fields(profile, *shape)
    # several fake profiles, so that each value can get a replacement different from itself
    # a rich profile's extra facts (birthday, pet, venue, ...) are swapped too, from rich fakes
    maker = make_rich_profile if profile.extra else make_profile
    fakes = [_fields(maker(f"swap-{seed}-{k}", seed, {profile.name}), *shape) for k in range(4)]
    pairs, used = [], set(real)
    for j, old in enumerate(real):
        new = next((f[j] for f in fakes if f[j] not in used), None)
        if old and new is not None:
            pairs.append((old, new))
            used.add(new)
    context, reference = task.private_context, task.reference
    # longest values first, through placeholders, so "Dr Okafor" is not half-replaced via "Okafor"
    pairs.sort(key=lambda p: -len(p[0]))
    for i, (old, _new) in enumerate(pairs):
        context, reference = context.replace(old, f"\x00{i}\x00"), reference.replace(old, f"\x00{i}\x00")
    for i, (_old, new) in enumerate(pairs):
        context, reference = context.replace(f"\x00{i}\x00", new), reference.replace(f"\x00{i}\x00", new)
    return context, reference


def to_hf_dataset(fed: Federation, split: str):
    """A ``datasets.Dataset`` of one split's task records (or ``"history"`` for the past texts)."""
    import datasets

    if split == "history":
        rows = [asdict(h) for h in fed.history]
        cols = [f.name for f in fields(HistoryText)]
    else:
        rows = [t.to_json() for t in split_tasks(fed, split)]
        cols = [f.name for f in fields(TaskRecord)]
    data = {c: [r[c] for r in rows] for c in cols}
    features = {c: datasets.Value("string") for c in cols}
    if "private_facts" in features:
        features["private_facts"] = datasets.Sequence(datasets.Value("string"))
    return datasets.Dataset.from_dict(data, features=datasets.Features(features))


def partition_by_user(fed: Federation, split: str):
    """A flwr-datasets ``NaturalIdPartitioner`` over ``user_id`` with the split's dataset attached.

    Partition ids follow the sorted user ids, which equals :func:`user_ids` order (ids are zero
    padded), so ``partitioner.load_partition(i)`` is the data of ``user_ids(fed)[i]``. Users without
    rows in the split get no partition.
    """
    from flwr_datasets.partitioner import NaturalIdPartitioner

    part = NaturalIdPartitioner(partition_by="user_id")
    part.dataset = to_hf_dataset(fed, split)
    return part
