"""A fact audit that does not read the guard's list: corpora with a separate answer key, near matches
and token ids.

Why: an audit that searches the wire for the very strings the guard was handed only shows that a
string matcher hides strings it was given. Here the guard sees a private context and nothing else
(client/cogen/span_detector.py finds what is private in it); the facts it should have found are in an
answer key (``simulations/privacy/span_corpora/NAME.facts.jsonl``) that only this module reads. A fact
counts as *seen by the cloud* when it, or the form a device might write instead ("diabetes" for
"diabetic"), appears in what the device sent:

* as text, after normalisation (case, punctuation), whole words;
* as a **near match**: every content word of the fact shares a long prefix with a word on the wire
  (inflection: "divorced"/"divorce", "Maria"/"Maria's"; a common word on the wire, such as "more",
  must match exactly, or "more" would count as "Moretti"); for names, places, employers and
  addresses any one of their words is enough ("Lopez" alone names the user). This matcher is
  deliberately not the guard's (the guard uses stems, this uses prefixes), so a gap in one is not
  hidden by the same gap in the other;
* as **token ids**: the fact's token ids (with and without a leading space, lower- and title-case)
  as a run in the ids the device sent, and the text decoded from those ids.

:func:`measure_detector` is the detector's recall and precision on a corpus split without any cloud:
the guard replays the context itself as if the device wrote it out (the copy detector off, or it
would withhold everything), and the fact audit runs on what the guard released.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from spacy.lang.en.stop_words import STOP_WORDS

from fedcogen.client.cogen.private_spans import PrivateSpanGuard, SpanDetector
from fedcogen.client.cogen.wire_capture import sent_token_streams
from fedcogen.simulations.privacy.audit import sent_payloads
from fedcogen.text_match import normalise

CORPUS_DIR = Path(__file__).resolve().parent / "span_corpora"
CORPORA = ("cogenesis", "structured", "freetext")
#: dev: the detector was tuned on it; test: held out, then seen (tuning data since); heldout2: written
#: after the detector was frozen and run once (simulations/privacy/span_corpora_gen.py)
SPLITS = ("dev", "test", "heldout2")
#: fact kinds of which any single word identifies the user
ANY_WORD_KINDS = frozenset(("name", "place", "employer", "address"))
#: words that carry no fact ("divorced in 2019": "in")
FILLER = frozenset("a an the of in at on for to and or with my our his her their since from by is was".split())
#: two words near-match when they share this many leading letters (or all but the last 3 of the shorter)
NEAR_PREFIX = 4


@dataclass(frozen=True)
class Fact:
    """One labelled private fact of a corpus item (from the answer key)."""

    text: str
    kind: str
    variant: str = ""


@dataclass
class CorpusItem:
    """A private context and its answer key; only the audit reads ``facts``."""

    id: str
    split: str
    format: str
    context: str
    facts: list[Fact] = field(default_factory=list)


def load_contexts(name: str, split: str | None = None, folder: Path | None = None) -> list[CorpusItem]:
    """The contexts of corpus ``name`` (what a device holds), without their facts."""
    path = (folder or CORPUS_DIR) / f"{name}.jsonl"
    if not path.is_file():
        raise ValueError(f"no span corpus {name!r}: {path} does not exist (corpora: {', '.join(CORPORA)})")
    items = [CorpusItem(d["id"], d["split"], d["format"], d["context"])
             for d in map(json.loads, path.read_text(encoding="utf-8").splitlines()) if d]
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return [it for it in items if split is None or it.split == split]


def load_answer_key(name: str, folder: Path | None = None) -> dict[str, list[Fact]]:
    """``{item id: [Fact, ...]}`` from ``NAME.facts.jsonl``: for the audit only, never for a guard."""
    path = (folder or CORPUS_DIR) / f"{name}.facts.jsonl"
    if not path.is_file():
        raise ValueError(f"no answer key for span corpus {name!r}: {path} does not exist")
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            d = json.loads(line)
            out[d["id"]] = [Fact(f["text"], f["kind"], f.get("variant", "")) for f in d["facts"]]
    return out


def load_corpus(name: str, split: str | None = None, folder: Path | None = None) -> list[CorpusItem]:
    """Contexts with their facts attached (the audit's view)."""
    key = load_answer_key(name, folder)
    return [replace(it, facts=key.get(it.id, [])) for it in load_contexts(name, split, folder)]


# --------------------------------------------------------------------------- matching


def _near(a: str, b: str) -> bool:
    """``a`` (a fact's word) and ``b`` (a word on the wire) are one word up to inflection. A common
    English word on the wire (spaCy's stop-word list) only matches exactly: "more" is no "Moretti"."""
    if a == b:
        return True
    if min(len(a), len(b)) < NEAR_PREFIX or not (a.isalpha() and b.isalpha()) or b in STOP_WORDS:
        return False
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n >= max(NEAR_PREFIX, min(len(a), len(b)) - 3)


def _content_words(text: str) -> list[str]:
    return [w for w in normalise(text).split() if w not in FILLER]


def fact_in_text(fact: Fact, text_norm: str) -> list[str]:
    """How ``fact`` shows in normalised text: ``exact`` (whole words) and/or ``near``."""
    found = []
    padded = f" {text_norm} "
    forms = [f for f in (fact.text, fact.variant) if f]
    if any(normalise(f) and f" {normalise(f)} " in padded for f in forms):
        found.append("exact")
    words = set(text_norm.split())
    for form in forms:
        cw = _content_words(form)
        hit = [any(_near(w, x) for x in words) for w in cw]
        if cw and (any(hit) if fact.kind in ANY_WORD_KINDS else all(hit)):
            found.append("near")
            break
    return found


def _token_forms(tokenizer: Any, fact: Fact) -> list[list[int]]:
    runs: list[list[int]] = []
    for form in {f for f in (fact.text, fact.variant) if f}:
        for v in {form, form.lower(), form.title()}:
            for t in (v, " " + v):
                ids = list(tokenizer(t, add_special_tokens=False)["input_ids"])
                if ids and ids not in runs:
                    runs.append(ids)
    return runs


def _has_run(stream: Sequence[int], run: Sequence[int]) -> bool:
    n = len(run)
    return any(list(stream[i:i + n]) == list(run) for i in range(len(stream) - n + 1))


def audit_facts(facts: Iterable[Fact], *, texts: Sequence[str] = (), streams: Sequence[Sequence[int]] = (),
                tokenizer: Any = None) -> list[dict[str, Any]]:
    """Per fact: whether the cloud saw it and where (``text``/``decoded_ids`` exact or near, ``token_ids``).

    ``texts``: strings the device sent; ``streams``: token-id sequences it sent (decoded with
    ``tokenizer`` and searched as runs).
    """
    text_norm = normalise("\n".join(texts))
    decoded = [normalise(tokenizer.decode(list(s), skip_special_tokens=True)) for s in streams if s] if tokenizer else []
    out = []
    for f in facts:
        where = [f"text:{w}" for w in fact_in_text(f, text_norm)] if text_norm else []
        for d in decoded:
            where += [f"decoded_ids:{w}" for w in fact_in_text(f, d) if f"decoded_ids:{w}" not in where]
        if tokenizer is not None and any(_has_run(s, r) for s in streams for r in _token_forms(tokenizer, f)):
            where.append("token_ids")
        out.append({"fact": f.text, "kind": f.kind, "variant": f.variant, "seen": bool(where), "found_in": where})
    return out


def audit_capture(capture: Any, facts: Iterable[Fact], tokenizer: Any) -> list[dict[str, Any]]:
    """:func:`audit_facts` on everything a device sent (a ``WireCapture`` or a list of its records):
    every string field, and the token ids both as sent and as the cloud's sequence after rewinds."""
    payloads = sent_payloads(capture)
    texts = [t for p in payloads for t in p.texts]
    records = list(capture.records) if hasattr(capture, "records") else list(capture)
    streams = [[i for p in payloads for i in p.token_ids], *sent_token_streams(records)]
    return audit_facts(facts, texts=texts, streams=streams, tokenizer=tokenizer)


# --------------------------------------------------------------------------- detector measurement


def _fact_char_ranges(context: str, fact: Fact) -> list[tuple[int, int]]:
    low, out = context.lower(), []
    for form in {fact.text, fact.variant} - {""}:
        i = low.find(form.lower())
        while i >= 0:
            out.append((i, i + len(form)))
            i = low.find(form.lower(), i + 1)
    return out


def replay(tokenizer: Any, context: str, detector: SpanDetector) -> tuple[PrivateSpanGuard, list[int], list[int]]:
    """The guard (built from ``context`` alone) fed the context's own tokens; returns the guard, the
    token ids and the char end of each token in the decoded text."""
    guard = PrivateSpanGuard.for_context(tokenizer, context, detector=replace(detector, ngram=0))
    ids = list(tokenizer(context + "\n", add_special_tokens=False)["input_ids"])
    ends = []
    for t in ids:
        guard.commit(t)
        ends.append(len(tokenizer.decode(guard.generated, skip_special_tokens=True)))
    return guard, ids, ends


def measure_detector(tokenizer: Any, items: Sequence[CorpusItem], detector: SpanDetector | None = None
                     ) -> dict[str, Any]:
    """Fact recall (share of facts the released text does not show, by :func:`fact_in_text`) and
    token precision (share of withheld tokens that overlap a fact) of the detector on ``items``, and
    the share of the context's tokens it withheld (a detector that withholds everything has perfect
    recall and is useless: this is its cost)."""
    det = detector or SpanDetector()
    n_facts = kept = tp = withheld = total = 0
    missed: list[dict[str, str]] = []
    for it in items:
        guard, ids, ends = replay(tokenizer, it.context, det)
        decoded = tokenizer.decode(ids, skip_special_tokens=True)
        truth_ranges = [r for f in it.facts for r in _fact_char_ranges(decoded, f)]
        starts = [0, *ends[:-1]]
        total += len(ids)
        for i in range(len(ids)):
            if guard.private[i] or i >= guard.released:
                withheld += 1
                tp += any(a < ends[i] and starts[i] < b for a, b in truth_ranges)
        released = normalise(tokenizer.decode(guard.sent, skip_special_tokens=True))
        for f in it.facts:
            if not normalise(f.text) or f" {normalise(f.text)} " not in f" {normalise(it.context)} ":
                continue  # the answer key lists only facts in the context; skip any that is not
            n_facts += 1
            if fact_in_text(Fact(f.text, f.kind), released):
                missed.append({"id": it.id, "fact": f.text, "kind": f.kind})
            else:
                kept += 1
    return {"items": len(items), "facts": n_facts, "facts_found": kept,
            "recall": kept / n_facts if n_facts else 1.0,
            "precision": tp / withheld if withheld else 1.0, "tokens_withheld": withheld, "tokens": total,
            "withheld_share": withheld / total if total else 0.0, "missed": missed}
