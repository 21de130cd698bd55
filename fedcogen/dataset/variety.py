"""How varied a federation's texts are: distinct n-gram ratios and template reuse across users.

Why: an adapter trained on few templates learns the templates (issue 26), so the generator's variety is
a figure to report, not a feeling. Two kinds of measure:

* **distinct-n** (Li et al. 2016): distinct word n-grams / all word n-grams over a set of texts, per field
  (references, contexts, instructions). Depends on corpus size, so compare federations of the same
  size (same users and tasks per user; the report states both).
* **template reuse across users**: each reference is cut into sentences and every private value of its user
  is replaced by ``<v>``; a sentence *skeleton* used by two or more users is a shared template. Reported as
  the share of reference sentences whose skeleton another user also wrote, the share of whole references
  whose skeleton another user also has, and the number of distinct skeletons.

Plus the shape of the contexts (words: mean, 90th percentile, max), the number of task kinds and of
context layouts (the first line's shape), so a report can say what kind of variety grew.
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from fedcogen.dataset.schema import SPLITS, Federation

_WORD = re.compile(r"[\w']+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def words(text: str) -> list[str]:
    """Lower-case word tokens (letters, digits, apostrophes)."""
    return _WORD.findall(text.casefold())


def distinct_n(texts: Iterable[str], n: int) -> float | None:
    """Distinct word n-grams / all word n-grams over ``texts`` (n-grams never cross texts); ``None`` if none."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        w = words(text)
        grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else None


def skeleton(text: str, values: Sequence[str]) -> str:
    """``text`` with every value replaced by ``<v>`` (longest first), lower-cased, spaces squeezed."""
    out = text
    for v in sorted((v for v in values if v), key=len, reverse=True):
        out = out.replace(v, "<v>")
    return " ".join(out.casefold().split())


def template_reuse(texts_by_user: dict[str, list[str]], values_by_user: dict[str, list[str]]) -> dict[str, Any]:
    """Sentence and whole-text skeleton reuse across users (see the module docstring)."""
    sent_users: dict[str, set[str]] = defaultdict(set)
    text_users: dict[str, set[str]] = defaultdict(set)
    per_user: dict[str, list[tuple[str, list[str]]]] = {}
    for user, texts in texts_by_user.items():
        vals = values_by_user.get(user, [])
        rows = []
        for t in texts:
            whole = skeleton(t, vals)
            sents = [skeleton(s, vals) for s in _SENTENCE.split(t) if s.strip()]
            text_users[whole].add(user)
            for s in sents:
                sent_users[s].add(user)
            rows.append((whole, sents))
        per_user[user] = rows
    n_sent = shared_sent = n_text = shared_text = 0
    for rows in per_user.values():
        for whole, sents in rows:
            n_text += 1
            shared_text += len(text_users[whole]) > 1
            n_sent += len(sents)
            shared_sent += sum(len(sent_users[s]) > 1 for s in sents)
    return {
        "sentences": n_sent,
        "distinct_sentence_skeletons": len(sent_users),
        "sentence_skeletons_shared_across_users": round(shared_sent / n_sent, 4) if n_sent else None,
        "texts": n_text,
        "text_skeletons_shared_across_users": round(shared_text / n_text, 4) if n_text else None,
        "mean_users_per_sentence_skeleton": round(statistics.mean(len(u) for u in sent_users.values()), 3)
        if sent_users else None,
    }


def _layout(context: str) -> str:
    """The shape of a context's first line: its letters turned into ``a``, digits into ``9``, up to the first value."""
    first = next((line for line in context.splitlines() if line.strip()), "")
    return re.sub(r"[0-9]", "9", re.sub(r"[A-Za-z]+", "a", first))[:12]


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def variety_report(fed: Federation, splits: Sequence[str] = SPLITS) -> dict[str, Any]:
    """Variety figures of a federation's tasks (``splits``) and history."""
    tasks = [t for s in splits for t in fed.tasks[s]]
    if not tasks:
        raise ValueError(f"no tasks in splits {list(splits)}: nothing to measure")
    values = {p.user_id: [*p.private_values, *(r["name"] for r in p.relatives), p.first_name] for p in fed.profiles}
    refs_by_user: dict[str, list[str]] = defaultdict(list)
    for t in tasks:
        refs_by_user[t.user_id].append(t.reference)
    ctx_words = sorted(len(c.split()) for c in (t.private_context for t in tasks))
    refs = [t.reference for t in tasks]
    return {
        "users": len(fed.profiles),
        "tasks": len(tasks),
        "variety": fed.config.variety,
        "task_kinds": len({t.task_type for t in tasks}),
        "scenarios": len({t.scenario.split("/absent")[0] for t in tasks}),
        "context_layouts": len({_layout(t.private_context) for t in tasks}),
        "distinct_n": {
            field: {f"distinct_{n}": _round(distinct_n(texts, n)) for n in (1, 2, 3)}
            for field, texts in (("references", refs), ("contexts", [t.private_context for t in tasks]),
                                 ("instructions", [t.instruction for t in tasks]),
                                 ("history", [h.text for h in fed.history]))
        },
        "template_reuse": template_reuse(dict(refs_by_user), values),
        "context_words": {"mean": round(statistics.mean(ctx_words), 1),
                          "p90": ctx_words[int(0.9 * (len(ctx_words) - 1))], "max": ctx_words[-1]},
        "reference_words": round(statistics.mean(len(r.split()) for r in refs), 1),
        "facts_per_task": round(statistics.mean(len(t.private_facts) for t in tasks), 2),
        "tasks_without_facts_in_context": sum(1 for t in tasks if "/absent" in t.scenario),
    }
