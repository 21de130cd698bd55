"""Run generation variants over a task set and aggregate metrics per user, then overall.

The evaluator knows nothing about models or gRPC: it drives any :class:`Generator`
(``generate(task, variant) -> result``). The real one is the device-side CoGenesis generator
(``fedcogen.client.cogen.cogen_device``) behind :class:`fedcogen.simulations.evaluation.cogen_generator.CogenGenerator`; unit tests
use a deterministic in-test generator so the metric and aggregation arithmetic can be checked
by hand.

Aggregation order matters: per task -> mean per user -> mean over users. Every user counts once
regardless of how many tasks they have, and the bootstrap resamples users (see metrics.py).

An answer that fell back (the cloud was unreachable, refused or timed out, and the device finished
alone) is never scored under the variant it did not run: by default it is a failed row (``error``,
``fell_back: true``), and with ``EvalConfig.allow_fallback`` it keeps its scores but is left out of the
variant's means; either way :func:`answer_counts` counts it per variant, and reports show the count.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from fedcogen.simulations.evaluation import metrics as m

log = logging.getLogger(__name__)

# metric name -> True if higher is better (used for the report and plots)
METRICS: dict[str, bool] = {
    "rouge_l": True,
    "fact_recall": True,
    "style_match": True,
    "leaked_facts": False,
    "bytes_sent": False,
    "bytes_received": False,
    "bytes_total": False,
    "tokens": True,
    "tokens_per_s": True,
    "latency_s": False,
    "cloud_call_fraction": False,
    "repeat_4gram": False,
    # names and places of other users (or of the generator's pools) in the answer, absent from its context
    "foreign_facts": False,
    # draft_edit: the share of the cloud's draft the answer kept, and device forwards per answer token (the
    # device variants: ~1; None where the generator did not count them)
    "draft_acceptance": True,
    "passes_per_token": False,
}
# metrics compared pairwise between variants (quality and privacy are what needs telling apart)
PAIRED_METRICS: tuple[str, ...] = ("rouge_l", "fact_recall", "style_match", "leaked_facts", "latency_s",
                                   "repeat_4gram", "foreign_facts")


@dataclass
class EvalAnswer:
    """One answer as the evaluation scores it: what the generation produced and cost (field names match the
    device generator's ``GenerationResult``) plus what the cloud received.

    ``cloud_received`` holds what the cloud got on the wire for this generation (bytes, text or a
    list of payloads); ``None`` means it was not captured, so leakage is reported as unmeasured.
    """

    text: str
    tokens: int = 0
    tokens_per_s: float | None = None
    bytes_sent: int = 0
    bytes_received: int = 0
    cloud_call_fraction: float = 0.0
    latency_s: float = 0.0
    fell_back: bool = False
    cloud_received: Any = None
    warnings: list[str] = field(default_factory=list)  # the generator's own words, e.g. why it fell back
    draft_tokens: int = 0  # draft_edit: the cloud's draft, the part of it kept, the device's own tokens
    draft_accepted: int = 0
    device_written: int = 0
    device_passes: int = 0  # device forwards after the prefill (0: not counted, e.g. a cloud-only variant)
    device_fed: int = 0  # tokens those forwards appended


@runtime_checkable
class Generator(Protocol):
    """Anything that answers a task with a given variant (the device generator, or a test fake)."""

    def generate(self, task: Any, variant: str) -> Any:  # returns a EvalAnswer-like object
        ...


@dataclass
class EvalConfig:
    """How to aggregate. Defaults are the documented ones: 1000 user resamples, 95 %, seed 0."""

    resamples: int = m.DEFAULT_RESAMPLES
    confidence: float = m.DEFAULT_CONFIDENCE
    seed: int = 0
    use_stemmer: bool = True
    fail_fast: bool = False  # re-raise a generator error instead of recording it in the row
    keep_text: bool = True  # store generated answers in the per-task rows
    progress: bool = True
    batch_size: int = 8  # tasks answered in lockstep by generators that can batch (``generate_batch``)
    # keep answers that fell back to the device alone (scored, but left out of the variant's means);
    # off: such an answer is a failed row
    allow_fallback: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {self.batch_size})")


@dataclass
class EvalResult:
    """Everything an evaluation produced; :meth:`to_dict` is the JSON written by ``fedcogen eval``."""

    variants: list[str]
    rows: list[dict[str, Any]]
    per_user: dict[str, dict[str, dict[str, float | None]]]
    overall: dict[str, dict[str, m.ConfidenceInterval]]
    paired: list[m.PairedDifference]
    notes: list[str] = field(default_factory=list)
    config: EvalConfig = field(default_factory=EvalConfig)
    meta: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # see answer_counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "config": asdict(self.config),
            "variants": self.variants,
            "counts": self.counts,
            "notes": self.notes,
            "overall": {
                v: {k: ci.to_dict() for k, ci in metrics.items()} for v, metrics in self.overall.items()
            },
            "paired": [p.to_dict() for p in self.paired],
            "per_user": self.per_user,
            "rows": self.rows,
        }


def task_id(task: Any, index: int) -> str:
    """A stable id for a task: its own ``task_id``/``id`` if it has one, else user and position."""
    for attr in ("task_id", "id"):
        val = getattr(task, attr, None)
        if val not in (None, ""):
            return str(val)
    return f"{getattr(task, 'user_id', '?')}#{index}"


def score_answer(
    task: Any,
    result: Any,
    *,
    markers: m.StyleMarkers | None,
    use_stemmer: bool = True,
    foreign: re.Pattern[str] | None = None,
) -> dict[str, Any]:
    """All per-task metrics of one generation (``None`` = not applicable / not measured); ``foreign``: the
    names and places counted by ``foreign_facts`` when absent from the task's own context."""
    text = str(getattr(result, "text", "") or "")
    own = f"{getattr(task, 'private_context', '')}\n{getattr(task, 'instruction', '')}"
    alien = m.foreign_facts(text, foreign, own)
    facts = list(getattr(task, "private_facts", None) or [])
    style = m.style_match(text, markers, getattr(task, "task_type", None) or None)
    leaked = m.leaked_facts(getattr(result, "cloud_received", None), facts)
    sent = int(getattr(result, "bytes_sent", 0) or 0)
    received = int(getattr(result, "bytes_received", 0) or 0)
    tps = getattr(result, "tokens_per_s", None)
    return {
        "rouge_l": m.rouge_l_f1(text, str(task.reference), use_stemmer=use_stemmer),
        "fact_recall": m.private_fact_recall(text, facts),
        "style_match": style.score,
        "style_detail": {"greeting": style.greeting, "sign_off": style.sign_off,
                         "favourite_phrase": style.favourite_phrase},
        "leaked_facts": None if leaked is None else len(leaked),
        "leaked": leaked,
        "bytes_sent": sent,
        "bytes_received": received,
        "bytes_total": sent + received,
        "tokens": int(getattr(result, "tokens", 0) or 0),
        "tokens_per_s": None if tps is None else float(tps),
        "latency_s": float(getattr(result, "latency_s", 0.0) or 0.0),
        "cloud_call_fraction": float(getattr(result, "cloud_call_fraction", 0.0) or 0.0),
        "repeat_4gram": m.repeated_ngram_share(m.normalise(text).split(), 4),
        "foreign_facts": None if alien is None else len(alien),
        "foreign": alien,
        **draft_counts(result),
    }


def draft_counts(result: Any) -> dict[str, Any]:
    """draft_edit's counts of one answer and the two rates the report shows (None where not applicable):
    ``draft_acceptance`` = kept / drafted tokens, ``passes_per_token`` = device forwards / answer tokens."""
    drafted = int(getattr(result, "draft_tokens", 0) or 0)
    kept = int(getattr(result, "draft_accepted", 0) or 0)
    passes = int(getattr(result, "device_passes", 0) or 0)
    tokens = int(getattr(result, "tokens", 0) or 0)
    return {
        "draft_tokens": drafted, "draft_accepted": kept,
        "device_written": int(getattr(result, "device_written", 0) or 0), "device_passes": passes,
        "device_fed": int(getattr(result, "device_fed", 0) or 0),
        "draft_acceptance": kept / drafted if drafted else None,
        "passes_per_token": passes / tokens if passes and tokens else None,
    }


def fallback_reason(result: Any) -> str:
    """Why an answer fell back, in the generator's words (its last warning)."""
    warnings = [str(w) for w in (getattr(result, "warnings", None) or [])]
    return warnings[-1] if warnings else "the cloud did not answer; the device finished alone"


def answer_counts(rows: Iterable[Mapping[str, Any]], variants: Sequence[str],
                  users: Iterable[str] | None = None) -> dict[str, dict[str, int]]:
    """variant -> ``tasks`` (rows), ``scored`` (in the means), ``fell_back`` and ``failed`` (errors other than
    fallbacks); only ``users``' rows when given. ``scored + fell_back + failed == tasks``."""
    keep = None if users is None else {str(u) for u in users}
    out = {v: {"tasks": 0, "scored": 0, "fell_back": 0, "failed": 0} for v in variants}
    for row in rows:
        if keep is not None and str(row["user_id"]) not in keep:
            continue
        c = out.setdefault(row["variant"], {"tasks": 0, "scored": 0, "fell_back": 0, "failed": 0})
        c["tasks"] += 1
        if row.get("fell_back"):
            c["fell_back"] += 1
        elif "error" in row:
            c["failed"] += 1
        else:
            c["scored"] += 1
    return out


def _progress(total: int, enabled: bool, desc: str):  # noqa: ANN202
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="gen", disable=not enabled, leave=False)


def evaluate(
    tasks: Sequence[Any],
    generator: Generator,
    variants: Sequence[str],
    *,
    profiles: Mapping[str, m.StyleMarkers] | None = None,
    config: EvalConfig | None = None,
    foreign_terms: Sequence[str] = (),
) -> EvalResult:
    """Answer every task with every variant, score, aggregate per user and overall with CIs.

    ``profiles`` maps user id -> style markers; users without markers get no style score and
    a note says so. A generator exception is recorded in that row (``error``) and the row is
    left out of the means, unless ``config.fail_fast``. An answer that fell back is a failed row too
    (``error`` and ``fell_back``), or with ``config.allow_fallback`` a scored row marked ``fell_back`` that
    the means leave out (see the module docstring).

    ``foreign_facts`` counts, per answer, names and places it contains that its own context and instruction
    do not: from ``foreign_terms`` (e.g. the generator's name and place pools,
    :func:`fedcogen.dataset.names_and_places`) and from the capitalised private facts of every task in
    ``tasks`` (other users' names, places, employers).
    """
    cfg = config or EvalConfig()
    if not variants:
        raise ValueError("no variants to evaluate")
    if len(set(variants)) != len(variants):
        raise ValueError(f"duplicate variants in {list(variants)}")
    if not tasks:
        raise ValueError("no tasks to evaluate (the dataset is empty or every line was invalid)")
    profiles = profiles or {}
    task_facts = [f for t in tasks for f in (getattr(t, "private_facts", None) or []) if f[:1].isupper()]
    foreign = m.foreign_pattern([*foreign_terms, *task_facts])
    notes: list[str] = []
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    ids = [task_id(t, i) for i, t in enumerate(tasks)]
    by_row: dict[tuple[str, str], dict[str, Any]] = {}
    batched = callable(getattr(generator, "generate_batch", None))
    step = cfg.batch_size if batched else 1
    with _progress(len(tasks) * len(variants), cfg.progress, "eval") as bar:
        for variant in variants:
            for lo in range(0, len(tasks), step):
                chunk = list(tasks[lo:lo + step])
                try:
                    results: list[Any] = (generator.generate_batch(chunk, variant) if batched
                                          else [generator.generate(chunk[0], variant)])
                    error = None
                except Exception as exc:  # noqa: BLE001 - recorded per row, see docstring
                    if cfg.fail_fast:
                        raise
                    log.warning("tasks %s.. variant %s failed: %s", ids[lo], variant, exc)
                    results, error = [None] * len(chunk), f"{type(exc).__name__}: {exc}"
                for j, (task, result) in enumerate(zip(chunk, results, strict=True)):
                    user = str(task.user_id)
                    row: dict[str, Any] = {"task_id": ids[lo + j], "user_id": user, "variant": variant,
                                           "task_type": getattr(task, "task_type", None)}
                    fell_back = error is None and bool(getattr(result, "fell_back", False))
                    if fell_back:
                        row.update(fell_back=True, fallback_reason=fallback_reason(result))
                    if error is not None:
                        row["error"] = error
                    elif fell_back and not cfg.allow_fallback:
                        row["error"] = f"fell back to the device alone: {row['fallback_reason']}"
                    else:
                        row.update(score_answer(task, result, markers=profiles.get(user),
                                                use_stemmer=cfg.use_stemmer, foreign=foreign))
                        if cfg.keep_text:
                            row["text"] = str(getattr(result, "text", ""))
                    by_row[(ids[lo + j], variant)] = row
                bar.update(len(chunk))
    rows = [by_row[(tid, v)] for tid in ids for v in variants]
    per_user = aggregate_per_user(rows, variants)
    overall = aggregate_overall(per_user, cfg)
    paired = paired_differences(per_user, variants, cfg)
    notes.extend(_notes(rows, tasks, profiles, variants))
    meta = {"tasks": len(tasks), "users": len({str(t.user_id) for t in tasks}),
            "seconds": round(time.perf_counter() - started, 3)}
    return EvalResult(list(variants), rows, per_user, overall, paired, notes, cfg, meta,
                      answer_counts(rows, variants))


def aggregate_per_user(
    rows: Iterable[Mapping[str, Any]], variants: Sequence[str]
) -> dict[str, dict[str, dict[str, float | None]]]:
    """variant -> user -> metric -> mean over that user's scored tasks (``None`` if no value); failed rows and
    answers that fell back are not the variant's and are left out."""
    grouped: dict[str, dict[str, list[Mapping[str, Any]]]] = {v: {} for v in variants}
    for row in rows:
        if "error" in row or row.get("fell_back"):
            continue
        grouped.setdefault(row["variant"], {}).setdefault(row["user_id"], []).append(row)
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for variant, users in grouped.items():
        out[variant] = {
            user: {
                **{k: m.mean_or_none(r.get(k) for r in urows) for k in METRICS},
                "n_tasks": float(len(urows)),
            }
            for user, urows in sorted(users.items())
        }
    return out


def aggregate_overall(
    per_user: Mapping[str, Mapping[str, Mapping[str, float | None]]], cfg: EvalConfig
) -> dict[str, dict[str, m.ConfidenceInterval]]:
    """variant -> metric -> mean over users with a bootstrap CI (users resampled)."""
    return {
        variant: {
            k: m.bootstrap_ci([u[k] for u in users.values() if u.get(k) is not None],
                              resamples=cfg.resamples, confidence=cfg.confidence, seed=cfg.seed)
            for k in METRICS
        }
        for variant, users in per_user.items()
    }


def paired_differences(
    per_user: Mapping[str, Mapping[str, Mapping[str, float | None]]],
    variants: Sequence[str],
    cfg: EvalConfig,
    metrics: Sequence[str] = PAIRED_METRICS,
) -> list[m.PairedDifference]:
    """Per-user paired (a - b) CIs for every pair of variants and each metric that both define."""
    out: list[m.PairedDifference] = []
    for a, b in itertools.combinations(variants, 2):
        for metric in metrics:
            ua = {u: vals.get(metric) for u, vals in per_user.get(a, {}).items()}
            ub = {u: vals.get(metric) for u, vals in per_user.get(b, {}).items()}
            diff = m.paired_difference_ci(ua, ub, names=(a, b, metric), resamples=cfg.resamples,
                                          confidence=cfg.confidence, seed=cfg.seed)
            if diff.ci.n:
                out.append(diff)
    return out


def _notes(
    rows: Sequence[Mapping[str, Any]],
    tasks: Sequence[Any],
    profiles: Mapping[str, m.StyleMarkers],
    variants: Sequence[str],
) -> list[str]:
    notes: list[str] = []
    users = sorted({str(t.user_id) for t in tasks})
    styled = [u for u in users if u in profiles and not profiles[u].empty]
    if not styled:
        notes.append("style match skipped: no profile with style markers was given for any user")
    elif len(styled) < len(users):
        notes.append(f"style match only for {len(styled)} of {len(users)} users (others have no profile)")
    if not any(getattr(t, "private_facts", None) for t in tasks):
        notes.append("private-fact recall and leakage skipped: no task lists private_facts")
    for v in variants:
        vrows = [r for r in rows if r["variant"] == v]
        errors = [r for r in vrows if "error" in r and not r.get("fell_back")]
        fallbacks = [r for r in vrows if r.get("fell_back")]
        if errors:
            notes.append(f"{v}: {len(errors)} of {len(vrows)} generations failed "
                         f"(first: {errors[0]['error']}); they are left out of the means")
        if fallbacks:
            first = fallbacks[0]["fallback_reason"]
            notes.append(f"{v}: {len(fallbacks)} of {len(vrows)} answers fell back to the device alone "
                         f"(first: {first}); they are not {v}'s and are left out of its means")
        if vrows and all(r.get("leaked_facts") is None for r in vrows if "error" not in r) and len(
            errors
        ) + len(fallbacks) < len(vrows):
            notes.append(f"{v}: leakage not measured (no wire capture for this variant)")
    if len(users) < 5:
        notes.append(f"only {len(users)} user(s): confidence intervals over users are wide or degenerate")
    return notes


def group_summaries(result: Mapping[str, Any], groups: Mapping[str, Iterable[str]], variants: Sequence[str],
                    cfg: EvalConfig) -> dict[str, dict[str, Any]]:
    """Per group of users (a task set, or seen / unseen users): overall means with CIs, paired per-user
    differences and answer counts, from one evaluation's JSON dict (``EvalResult.to_dict()``).

    Why from one evaluation: every set is decoded in the same batches by the same loaded models, and each
    set is still reported on its own users only (no set's users dilute another's interval).
    """
    out: dict[str, dict[str, Any]] = {}
    for name, users in groups.items():
        keep = {str(u) for u in users}
        per_user = {v: {u: vals for u, vals in by_user.items() if u in keep}
                    for v, by_user in result["per_user"].items()}
        out[name] = {
            "users": sorted(keep),
            "tasks": len({r["task_id"] for r in result["rows"] if str(r["user_id"]) in keep}),
            "overall": {v: {k: ci.to_dict() for k, ci in metrics.items()}
                        for v, metrics in aggregate_overall(per_user, cfg).items()},
            "paired": [p.to_dict() for p in paired_differences(per_user, variants, cfg)],
            "counts": answer_counts(result["rows"], variants, keep),
        }
    return out
