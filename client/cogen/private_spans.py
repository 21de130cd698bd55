"""Private-span protection: the tokens of a private fact the device writes never go on the wire.

Why: in the ``logit`` and ``gated`` variants the device streams every committed token to the cloud.
A personalised device writes the user's name, city, employer, health details; streamed as-is, the
cloud reads them (the wire audit fails). :class:`PrivateSpanGuard` sits between the device's token
choice and ``send_step``: every committed token goes through :meth:`PrivateSpanGuard.commit`, and
only what :meth:`PrivateSpanGuard.commit` returns is sent.

What is private comes from the device's own context only (client/cogen/span_detector.py: profile
fields in any key style, JSON/YAML, names, places, sensitive terms, numbers, dates, addresses,
e-mails, phone numbers, the user's own patterns and values), never from an answer key. The guard
matches them four ways:

* **values**: normalised whole-word matches of every detected value (casefolded, punctuation runs =
  one space), so a value split over several tokens or written with other punctuation is found;
* **roots**: every content word of a value as a word root (nltk's Snowball stemmer), so an
  inflection the context never wrote is private too ("diabetes" when the profile says "diabetic");
* **near words**: a word sharing a long prefix with a content word of a value (at least
  ``NEAR_PREFIX`` letters, and all but the last 3 of the shorter word) is private, whatever the
  stemmer makes of it ("anemia" for "anemic", "anxious" for "anxiety", "garnished" for
  "garnishment"): as broad as the fact audit's near-match rule, so a form the audit counts as the
  fact is a form the guard withholds (common words excepted, as in the audit);
* **value token runs**: a value's token ids inside any word ("Lior" in "Liordi");
* **copy**: a token that completes an ``ngram``-token run of the private context's token ids
  (copied history text, canaries) is private, with the rest of that run.

No private token is ever sent before the detector knows: a token is **held** while the text from a
word start up to it is the beginning of a private value ("Dr." could become "Dr. Okafor") or of a
word sharing a root with one ("diab" could become "diabetes"), and released (or replaced) once the
value either completes (private) or diverges (public). A copied run is recognised only at its ``ngram``-th token, so its first ``ngram - 1`` tokens can go out; the
value detector covers the facts inside such runs, the copy detector the rest of the run.

Private tokens are replaced by one neutral placeholder per span (``" ..."``, one token), sent with
the first public token after the span, so the cloud's prefix stays a readable sentence. While tokens
are held or a span is open the cloud's view is behind the device's: the device then decodes alone
(:attr:`PrivateSpanGuard.synced` is False) and resumes fusing as soon as the cloud has caught up.
"""

from __future__ import annotations

import copy
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nltk.stem.snowball import SnowballStemmer

from fedcogen.client.cogen.span_detector import PLACEHOLDER, SpanDetector, context_values
from fedcogen.client.cogen.span_lexicon import sentence_words, stop_words
from fedcogen.text_match import normalise

__all__ = ["PLACEHOLDER", "PrivateSpanGuard", "SpanDetector", "context_values", "private_token_labels", "value_roots"]
#: roots shorter than this only match a word whose stem equals them (no prefix match)
MIN_PREFIX_ROOT = 5
#: two words are one (inflection, derivation) when they share this many leading letters and all but
#: the last 3 letters of the shorter one (the fact audit's rule, simulations/privacy/fact_audit.py)
NEAR_PREFIX = 4


def value_words(values: Iterable[str]) -> list[str]:
    """The content words (4+ letters, not common sentence words) of private values, as written."""
    common = sentence_words()
    return sorted({w for v in values for w in normalise(v).split() if len(w) >= 4 and w.isalpha() and w not in common})


def near_word(word: str, value_word: str) -> bool:
    """``word`` and ``value_word`` share at least :data:`NEAR_PREFIX` leading letters and all but the
    last 3 of the shorter one ("anemia"/"anemic", "anxious"/"anxiety")."""
    cp = _common_prefix(word, value_word)
    return cp >= max(NEAR_PREFIX, min(len(word), len(value_word)) - 3)


def value_roots(values: Iterable[str], stemmer: Any) -> list[str]:
    """Stems of the content words (4+ letters, not common sentence words) of private values."""
    roots = set()
    common = sentence_words()
    for v in values:
        for w in normalise(v).split():
            if len(w) >= 4 and w.isalpha() and w not in common:
                roots.add(stemmer.stem(w))
    return sorted(roots)


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class PrivateSpanGuard:
    """Per answer: decides for every committed token whether it may go to the cloud.

    Build with :meth:`for_context`. ``commit(tok)`` returns the ids to send now (possibly none, or a
    placeholder followed by held public tokens).
    """

    tokenizer: Any
    values: list[str]
    context_ngrams: set[tuple[int, ...]]
    ngram: int
    placeholder_ids: list[int]
    generated: list[int] = field(default_factory=list)
    private: list[bool] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)  # everything released, placeholders included (replay)
    released: int = 0  # committed tokens already decided and released
    in_span: bool = False
    private_tokens: int = 0
    placeholders: int = 0
    _ends: list[int] = field(default_factory=list)  # char end of each token in the decoded text
    _norm_values: list[str] = field(default_factory=list)
    _value_runs: list[tuple[int, ...]] = field(default_factory=list)
    roots: list[str] = field(default_factory=list)
    words: list[str] = field(default_factory=list)
    _stemmer: Any = None
    _common: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self._stemmer = SnowballStemmer("english")
        if not self.roots:
            self.roots = value_roots(self.values, self._stemmer)
        if not self.words:
            self.words = value_words(self.values)
        self._common = stop_words()
        self._norm_values = sorted({v for v in (normalise(x).strip() for x in self.values) if v}, key=len)
        runs = set()  # each value's token ids, with and without a leading space (as the wire audit searches)
        for v in self.values:
            for text in (v, " " + v):
                ids = tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if v.strip() else ()
                if ids:
                    runs.add(ids)
        self._value_runs = sorted(runs)

    @classmethod
    def for_context(cls, tokenizer: Any, context: str, extra_values: Iterable[str] = (),
                    detector: SpanDetector | None = None, instruction: str = "") -> PrivateSpanGuard:
        """The guard of one answer: what is private comes from ``context`` alone; the ``instruction``
        (which the cloud holds anyway) only keeps its own words out of the rare-word rule."""
        det = detector or SpanDetector()
        values = context_values(context, det, extra_values, instruction)
        grams: set[tuple[int, ...]] = set()
        if det.ngram > 0:
            ids = tokenizer(context, add_special_tokens=False)["input_ids"]
            grams = {tuple(ids[i:i + det.ngram]) for i in range(len(ids) - det.ngram + 1)}
        placeholder = tokenizer(det.placeholder, add_special_tokens=False)["input_ids"]
        return cls(tokenizer, values, grams, det.ngram, list(placeholder))

    # ------------------------------------------------------------------ state
    @property
    def synced(self) -> bool:
        """True when the cloud's prefix covers every committed token (fusion is meaningful)."""
        return self.released == len(self.generated) and not self.in_span

    def fork(self) -> PrivateSpanGuard:
        """A copy to try tokens on (speculative drafts) without touching this guard; shares the
        read-only detector tables, copies the per-answer state."""
        twin = copy.copy(self)
        for name in ("generated", "private", "sent", "_ends"):
            setattr(twin, name, list(getattr(self, name)))
        return twin

    def commit(self, token: int) -> list[int]:
        """Record the device's committed token; return the token ids that may be sent now."""
        self.generated.append(int(token))
        self.private.append(False)
        text = self.tokenizer.decode(self.generated, skip_special_tokens=True)
        self._ends.append(len(text))
        held_from = self._mark(text)
        return self._release(held_from)

    def _token_at(self, char: int) -> int:
        for i, end in enumerate(self._ends):
            if char < end:
                return i
        return len(self._ends) - 1

    def _mark(self, text: str) -> int:
        """Mark private tokens; return the first token index still undecided (len(generated) if none)."""
        n = self.ngram
        if n > 0 and len(self.generated) >= n and tuple(self.generated[-n:]) in self.context_ngrams:
            for i in range(len(self.generated) - n, len(self.generated)):
                self.private[i] = True
        held = self._mark_runs()
        if not self._norm_values:
            return held
        norm, where = _normalise_with_map(text)
        held = min(held, self._mark_roots(norm, where))
        starts = [i for i in range(len(norm)) if norm[i] != " " and (i == 0 or norm[i - 1] == " ")]
        longest = len(self._norm_values[-1])
        for s in (s for s in starts if len(norm) - s <= longest + 1):
            tail = norm[s:]
            for v in self._norm_values:
                if len(tail) > len(v) and tail.startswith(v) and tail[len(v)] == " ":  # a whole-word match
                    for t in range(self._token_at(where[s]), self._token_at(where[s + len(v) - 1]) + 1):
                        self.private[t] = True
                elif len(tail) <= len(v) and v.startswith(tail):  # could still become v (or a longer word): hold
                    held = min(held, self._token_at(where[s]))
        return held

    def _mark_roots(self, norm: str, where: list[int]) -> int:
        """Word level: the last words of the text that share a root with a private value are private
        (complete words) or held (a word still being written that could become one)."""
        held = len(self.generated)
        if not self.roots and not self.words:
            return held
        starts = [i for i in range(len(norm)) if norm[i] != " " and (i == 0 or norm[i - 1] == " ")][-3:]
        for s in starts:
            e = norm.find(" ", s)
            complete = e >= 0
            w = norm[s:e] if complete else norm[s:]
            if len(w) < 3 or not w.isalpha():
                continue
            stem = self._stemmer.stem(w)
            private = hold = False
            if w not in self._common:  # near words (the audit's rule); a common word ("more") is never one
                for vw in self.words:
                    if near_word(w, vw):
                        private = complete
                        hold = not complete
                        if private:
                            break
                    elif not complete and _common_prefix(w, vw) == len(w):  # could still become one
                        hold = True
            for r in ([] if private else self.roots):
                cp = _common_prefix(stem, r)
                if stem == r or min(len(stem), len(r)) >= MIN_PREFIX_ROOT and cp >= min(len(stem), len(r)) - 1:
                    private = complete or len(r) >= MIN_PREFIX_ROOT and w.startswith(r)
                    hold = not private
                    if private:
                        break
                elif not complete and (_common_prefix(w, r) == len(w) or _common_prefix(w, r) >= min(len(r) - 1, 5)):
                    hold = True
            if private:
                last = (e if complete else len(norm)) - 1
                for t in range(self._token_at(where[s]), self._token_at(where[last]) + 1):
                    self.private[t] = True
            elif hold:
                held = min(held, self._token_at(where[s]))
        return held

    def _mark_runs(self) -> int:
        """Token level: a value's token run inside any word ("Lior" in "Liordi") is private too, and a
        suffix that starts such a run is held. Returns the first held token index."""
        gen, held = self.generated, len(self.generated)
        for run in self._value_runs:
            n = len(run)
            if len(gen) >= n and tuple(gen[-n:]) == run:
                for i in range(len(gen) - n, len(gen)):
                    self.private[i] = True
                continue
            for k in range(min(n - 1, len(gen)), 0, -1):
                if tuple(gen[-k:]) == run[:k]:
                    held = min(held, len(gen) - k)
                    break
        return held

    def _release(self, held_from: int) -> list[int]:
        out: list[int] = []
        while self.released < min(held_from, len(self.generated)):
            i = self.released
            if self.private[i]:
                self.private_tokens += 1
                self.in_span = True
            else:
                if self.in_span:
                    out += self.placeholder_ids
                    self.placeholders += 1
                    self.in_span = False
                out.append(self.generated[i])
            self.released += 1
        self.sent += out
        return out


def _normalise_with_map(text: str) -> tuple[str, list[int]]:
    """:func:`~fedcogen.text_match.normalise` of ``text`` and, per normalised char, the index of its source char."""
    out: list[str] = []
    where: list[int] = []
    for i, ch in enumerate(text):
        for c in unicodedata.normalize("NFKC", ch).casefold():
            if c.isalnum():
                out.append(c)
                where.append(i)
            elif not out or out[-1] != " ":
                out.append(" ")
                where.append(i)
    return "".join(out), where


def private_token_labels(tokenizer: Any, token_ids: Sequence[int], facts: Iterable[str]) -> list[bool]:
    """Ground truth for measuring a detector: which tokens of an answer overlap a private fact."""
    guard = PrivateSpanGuard(tokenizer, list(facts), set(), 0, [])
    for t in token_ids:
        guard.generated.append(int(t))
        guard.private.append(False)
        guard._ends.append(len(tokenizer.decode(guard.generated, skip_special_tokens=True)))
    guard._mark(tokenizer.decode(guard.generated, skip_special_tokens=True) + " ")  # a value may end the text
    return list(guard.private)
