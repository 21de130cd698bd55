"""Per-answer metrics and honest uncertainty for the CoGenesis evaluation.

Why these metrics:

* **ROUGE-L F1** (``rouge-score``) against the reference answer: the standard CoGenesis quality number.
* **private-fact recall**: the point of collaborating is that the *device* can use private context the
  cloud never sees; an answer that omits the user's facts is generic, however fluent.
* **style match**: personalisation also means writing like the user (greeting, sign-off, pet phrases
  from their profile). Skipped (``None``) when no profile gives markers, never silently scored 0.
* **leakage**: how many private facts appear in the bytes the cloud actually received. Measured on
  the wire (what the cloud *could* read), not on what the code intends to send.

Aggregation resamples *users*, not tasks: tasks of one user are correlated (same context, same style),
so a task-level bootstrap would give intervals that are too narrow. Paired differences between two
variants are bootstrapped on the per-user difference, so shared per-user difficulty cancels out.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fedcogen.text_match import contains_phrase, normalise  # noqa: F401 - re-exported: the metrics' matching

DEFAULT_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95
# Below this many users a bootstrap interval is too unreliable to call two variants different.
MIN_USERS_TO_DISTINGUISH = 5


def repeated_ngram_share(words: Sequence[str], n: int = 4) -> float | None:
    """Share of a text's n-grams that already occurred earlier in it (0 = no loop; 0.5 = half repeats).

    Word n-grams of the normalised text, so every variant (even the upper bound, whose tokens the
    device never sees) is measured the same way. ``None`` for texts shorter than n words.
    """
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return None
    seen: set[tuple[str, ...]] = set()
    repeated = 0
    for g in grams:
        repeated += g in seen
        seen.add(g)
    return repeated / len(grams)


def rouge_l_f1(prediction: str, reference: str, *, use_stemmer: bool = True) -> float:
    """ROUGE-L F-measure from the ``rouge-score`` package (its tokenizer: lower-case alphanumerics)."""
    return float(_scorer(use_stemmer).score(reference, prediction)["rougeL"].fmeasure)


@functools.lru_cache(maxsize=2)
def _scorer(use_stemmer: bool):  # noqa: ANN202 - rouge_score has no type hints
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)


def private_fact_recall(answer: str, facts: Sequence[str] | None) -> float | None:
    """Fraction of the task's private facts present in the answer (whole words, normalised).

    ``None`` when the task lists no facts: "no facts to recall" is not the same as "recalled none".
    """
    facts = [f for f in (facts or []) if normalise(f)]
    if not facts:
        return None
    return sum(contains_phrase(answer, f) for f in facts) / len(facts)


def foreign_pattern(terms: Iterable[str]) -> re.Pattern[str] | None:
    """One case-sensitive whole-word pattern over proper-noun ``terms`` (longest first); ``None`` if none.

    Case-sensitive on purpose: these are names and places ("Cork", "Nelson"), and a lower-case "cork" in an
    answer is a word, not a place someone invented.
    """
    uniq = sorted({t.strip() for t in terms if t and t.strip()}, key=len, reverse=True)
    if not uniq:
        return None
    return re.compile(r"(?<![\w])(?:" + "|".join(re.escape(t) for t in uniq) + r")(?![\w])")


def foreign_facts(answer: str, pattern: re.Pattern[str] | None, own_text: str) -> list[str] | None:
    """Names and places of *other* users in an answer: terms of ``pattern`` found in ``answer`` that the
    task's own text (``own_text``: its private context and instruction) does not contain.

    Why: an adapter that learned its training users writes their names and cities into anyone's answer
    (issue 26: "Tampere with Eleanor Stone" for a user who never mentioned either). ``None`` = no vocabulary.
    """
    if pattern is None:
        return None
    found = dict.fromkeys(m.group(0) for m in pattern.finditer(answer))
    return [t for t in found if not contains_phrase(own_text, t)]


@dataclass(frozen=True)
class StyleMarkers:
    """A user's writing style as their profile describes it; any field may be empty.

    ``greeting_in`` / ``sign_off_in`` name the task types where the marker belongs (nobody opens a
    social-media post with "Dear ..."); ``None`` means every task type.
    """

    greeting: str | None = None
    sign_off: str | None = None
    favourite_phrases: tuple[str, ...] = ()
    greeting_in: tuple[str, ...] | None = None
    sign_off_in: tuple[str, ...] | None = None

    @property
    def empty(self) -> bool:
        return not (self.greeting or self.sign_off or self.favourite_phrases)

    @classmethod
    def from_profile(cls, profile: Mapping[str, object]) -> StyleMarkers:
        """Read markers from a ``profiles.jsonl`` row, tolerating the common spellings.

        Accepts the markers at the top level or under ``style`` / ``style_markers`` (the generated
        federation's profiles use ``style``); a single string for phrases is treated as one phrase.
        """
        src: Mapping[str, object] = profile
        for key in ("style_markers", "style"):
            nested = profile.get(key)
            if isinstance(nested, Mapping):
                src = nested
                break

        def pick(*names: str) -> object:
            for n in names:
                if src.get(n):
                    return src[n]
            return None

        def kinds(name: str) -> tuple[str, ...] | None:
            val = src.get(name)
            if isinstance(val, list | tuple):
                return tuple(str(v) for v in val)
            return None

        greeting = pick("greeting")
        sign_off = pick("sign_off", "signoff", "closing")
        phrases = pick("favourite_phrases", "favorite_phrases", "phrases", "catchphrases")
        if isinstance(phrases, str):
            phrases = [phrases]
        return cls(
            greeting=(str(greeting).strip() or None) if greeting else None,
            sign_off=(str(sign_off).strip() or None) if sign_off else None,
            favourite_phrases=tuple(str(p) for p in (phrases or []) if str(p).strip()),
            greeting_in=kinds("greeting_in"),
            sign_off_in=kinds("sign_off_in"),
        )


@dataclass(frozen=True)
class StyleScore:
    """Which markers were present; ``score`` is the mean over the markers the profile defines."""

    greeting: bool | None
    sign_off: bool | None
    favourite_phrase: bool | None
    score: float | None


def style_match(answer: str, markers: StyleMarkers | None, task_type: str | None = None) -> StyleScore:
    """Check greeting, sign-off and 'any favourite phrase' presence; ``None`` parts do not apply.

    A greeting / sign-off applies when the profile defines it and (if it says where it belongs)
    ``task_type`` is one of those places; an unknown ``task_type`` counts every marker.
    """
    if markers is None or markers.empty:
        return StyleScore(None, None, None, None)

    def applies(where: tuple[str, ...] | None) -> bool:
        return where is None or not task_type or task_type in where

    greeting = contains_phrase(answer, markers.greeting) if markers.greeting and applies(markers.greeting_in) else None
    sign_off = contains_phrase(answer, markers.sign_off) if markers.sign_off and applies(markers.sign_off_in) else None
    phrase = (
        any(contains_phrase(answer, p) for p in markers.favourite_phrases)
        if markers.favourite_phrases
        else None
    )
    checks = [c for c in (greeting, sign_off, phrase) if c is not None]
    return StyleScore(greeting, sign_off, phrase, sum(checks) / len(checks) if checks else None)


def wire_text(captured: bytes | str | Iterable[bytes | str] | None) -> str | None:
    """Readable text of everything the cloud received; ``None`` means "not captured".

    Payloads are decoded as UTF-8 with undecodable bytes replaced, so protobuf framing becomes
    separators while the UTF-8 strings inside messages stay searchable. Chunks are joined with a
    space (separate messages never form one word).
    """
    if captured is None:
        return None
    if isinstance(captured, bytes | bytearray | memoryview):
        chunks: Iterable[bytes | str] = [bytes(captured)]
    elif isinstance(captured, str):
        chunks = [captured]
    else:
        chunks = captured
    parts = [c if isinstance(c, str) else bytes(c).decode("utf-8", errors="replace") for c in chunks]
    return " ".join(parts)


def leaked_facts(
    captured: bytes | str | Iterable[bytes | str] | None, facts: Sequence[str] | None
) -> list[str] | None:
    """The private facts found in what the cloud received (substring match after normalisation).

    Substring (not whole-word) matching errs on the side of reporting a leak. ``None`` when nothing
    was captured for this answer, so "unmeasured" is never reported as "no leak".
    """
    text = wire_text(captured)
    if text is None:
        return None
    return [f for f in (facts or []) if contains_phrase(text, f, whole_words=False)]


# --------------------------------------------------------------------------------------------
# confidence intervals


@dataclass(frozen=True)
class ConfidenceInterval:
    """A mean with a percentile-bootstrap interval over ``n`` units (users)."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float = DEFAULT_CONFIDENCE
    resamples: int = DEFAULT_RESAMPLES
    note: str = ""

    @property
    def width(self) -> float:
        return self.high - self.low

    def excludes_zero(self) -> bool:
        """For a paired difference: the two variants are distinguishable at this confidence."""
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def fmt(self, digits: int = 3) -> str:
        if self.n == 0 or math.isnan(self.mean):
            return "n/a"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> ConfidenceInterval:
    """Percentile bootstrap CI of the mean of ``values`` (one value per user), seeded.

    With a single user the interval collapses to the point and says so in ``note``: one user
    cannot show spread, and pretending otherwise would be dishonest.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = int(arr.size)
    if n == 0:
        return ConfidenceInterval(math.nan, math.nan, math.nan, 0, confidence, resamples, "no values")
    mean = float(arr.mean())
    if n == 1:
        return ConfidenceInterval(mean, mean, mean, 1, confidence, resamples, "one user: no interval")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    means = arr[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return ConfidenceInterval(mean, float(low), float(high), n, confidence, resamples)


@dataclass(frozen=True)
class PairedDifference:
    """Mean over shared users of (a - b) for one metric, with its bootstrap CI."""

    variant_a: str
    variant_b: str
    metric: str
    ci: ConfidenceInterval
    users: list[str] = field(default_factory=list)

    @property
    def distinguishable(self) -> bool:
        """The interval excludes 0 *and* there are enough users for the bootstrap to mean it."""
        return self.ci.n >= MIN_USERS_TO_DISTINGUISH and self.ci.excludes_zero()

    def to_dict(self) -> dict[str, object]:
        return {
            "a": self.variant_a,
            "b": self.variant_b,
            "metric": self.metric,
            **self.ci.to_dict(),
            "distinguishable": self.distinguishable,
        }


def paired_difference_ci(
    a_by_user: Mapping[str, float | None],
    b_by_user: Mapping[str, float | None],
    *,
    names: tuple[str, str, str] = ("a", "b", "metric"),
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> PairedDifference:
    """Bootstrap CI of the per-user difference a - b over users that have both values.

    Pairing removes between-user variance (some users' tasks are just harder), so a real but
    small improvement shows up as an interval that excludes zero.
    """
    users = sorted(
        u
        for u in a_by_user.keys() & b_by_user.keys()
        if a_by_user[u] is not None and b_by_user[u] is not None
        and not math.isnan(a_by_user[u]) and not math.isnan(b_by_user[u])  # type: ignore[arg-type]
    )
    diffs = [float(a_by_user[u]) - float(b_by_user[u]) for u in users]  # type: ignore[arg-type]
    ci = bootstrap_ci(diffs, resamples=resamples, confidence=confidence, seed=seed)
    return PairedDifference(names[0], names[1], names[2], ci, users)


def mean_or_none(values: Iterable[float | None]) -> float | None:
    """Mean of the defined values; ``None`` if there are none (metric not applicable)."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(vals) / len(vals) if vals else None


def overall_mean(overall: Mapping[str, Any], variant: str, metric: str) -> float:
    """The mean of one variant's metric in an ``overall`` table of CI dicts; NaN when it was not measured."""
    v = (overall.get(variant, {}).get(metric) or {}).get("mean")
    return float("nan") if v is None else float(v)
