"""What in a private context is private: the detector behind :class:`~fedcogen.client.cogen.private_spans.PrivateSpanGuard`.

It runs on the device, on the device's own context only (never on an answer key), and returns the
private values it finds, each with its kind:

* ``field``: the values of profile items in any key style, JSON or YAML (client/cogen/span_structure.py),
  whole and split on ``,``/``&``/"and", and each content word of a short value on its own;
* ``pii``: e-mail addresses, phone numbers, credit cards, IP addresses, IBANs, US SSNs, URLs and
  numeric dates, by presidio-analyzer's predefined recognisers (well kept, pattern + checksum based,
  no NLP model: they are called directly, not through presidio's AnalyzerEngine, which would want a
  spaCy model); e-mail and URL use presidio's patterns without its tldextract validation, which
  tries to download the public-suffix list at run time;
* ``number``/``date``/``address``: money, times, any number of two or more digits, dates written
  with month names, street addresses (hand-written: presidio's DateRecognizer knows numeric dates
  only and it has no street-address recogniser);
* ``name``: capitalised words anywhere in free text, sentence starts and after punctuation
  included, unless they are common sentence words (client/cogen/span_lexicon.py) that the text also
  writes in lowercase; the word after a title ("Dr. Patel"); acronyms ("TX", "A1C"); runs of
  capitalised words are also one value ("Maria Lopez", "St. David's Medical Center");
* ``sensitive``: lowercase health, family, job, finance, legal and identity terms of the lexicon,
  matched by root ("diabet" finds "diabetic" and "diabetes");
* ``cue``: the noun phrase that a contextual cue of free text points at, whatever its words: after
  "as a", "diagnosed with", "suffers from", "treated for", "owes", "behind on", ... ("works as a
  court reporter" -> "court reporter"), and before a word that files a private matter ("the wage
  garnishment letter", "my shingles flared up"); the cues are in :data:`CUES_AFTER`/``CUES_BEFORE``
  (client/cogen/span_lexicon.py) and generalise to terms no list holds;
* ``rare``: every word of the context rarer than ``rare_zipf`` on wordfreq's Zipf scale (log10 of
  uses per billion words; wordfreq ships its English table inside its wheel, nothing is downloaded)
  that the instruction does not also use. Conditions, jobs, employers and debts a lexicon has never
  heard of ("glaucoma" 3.0, "forklift" 2.9, "garnishment" 2.2) are rare words; the cloud already
  holds the instruction, so its words are never withheld;
* ``user``: the user's own regular expressions and explicit values (:class:`SpanDetector`).

Why names and sensitive terms are found lexically: see client/cogen/span_lexicon.py (no installable NER).
A detector has no guaranteed recall; docs/privacy-spans.md reports what it reaches on held-out text.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml
from wordfreq import zipf_frequency

from fedcogen.client.cogen.span_lexicon import (
    CUES_AFTER,
    CUES_BEFORE,
    NEVER_PRIVATE,
    TITLES,
    sensitive_terms,
    sentence_words,
)
from fedcogen.client.cogen.span_structure import line_fields, object_fields
from fedcogen.text_match import normalise

PLACEHOLDER = " ..."
#: keys whose values describe how to write, not who the user is (still scanned as free text)
FREE_TEXT_KEYS = ("style", "tone", "format", "language", "length", "instruction", "task")
#: a value longer than this many words is free text (a bio, a past e-mail), not one fact
MAX_FACT_WORDS = 10

NUMBER_RE = re.compile(r"[€$£¥]?\d[\d,.:/-]*\d(?:\s?(?:[ap]\.?m\.?|k|%))?|[€$£¥]\d")
MONTHS = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
DATE_RE = re.compile(rf"\b(?:{MONTHS}\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?"
                     rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{MONTHS}(?:,?\s+\d{{4}})?|{MONTHS}\s+\d{{4}})\b", re.I)
STREET = r"(?:street|st|avenue|ave|road|rd|lane|ln|drive|dr|boulevard|blvd|way|court|ct|place|pl|terrace|close|crescent)"
ADDRESS_RE = re.compile(rf"\b\d{{1,5}}[A-Za-z]?\s+(?:[A-Z][\w'.-]*\s+){{1,3}}{STREET}\b\.?", re.I)
WORD_RE = re.compile(r"[^\W_][\w'’-]*")
SENTENCE_END = ".!?:;\"“”()[]{}\n*#>-•|"
JOINERS = frozenset(("of", "de", "del", "la", "van", "von", "da", "di", "st", "st."))
#: default rarity threshold (Zipf): ~3 uses per million words. Chosen from the scale, not a corpus:
#: everyday words ("lovely" 4.7, "deadline" 4.1, "picnic" 3.8) stay public, named conditions and trades
#: are below it; the measured cost is the share of the context withheld (docs/privacy-spans.md)
RARE_ZIPF = 3.5
#: a cue's noun phrase: up to 3 lowercase words (the words that fill the cue, stopped by punctuation,
#: a capitalised word or a function word)
NP_WORD = r"[a-z][a-z'’-]*"


@dataclass(frozen=True)
class SpanDetector:
    """Which detectors run, and the user's own additions (``fedcogen eval/generate --private-spans FILE``).

    ``values``: the value detectors below (off = copy detector only); ``ngram``: the copy detector's
    run length (0 = off); ``names``/``sensitive``/``pii``: the name, lexicon and presidio detectors;
    ``patterns``: the user's regular expressions (whole match is private); ``extra_values``: the
    user's explicit private values; ``cues``: the contextual-cue detector; ``rare_zipf``: words rarer
    than this (wordfreq Zipf) are private unless the instruction uses them (0 = rare-word rule off).
    """

    values: bool = True
    ngram: int = 6
    placeholder: str = PLACEHOLDER
    names: bool = True
    sensitive: bool = True
    pii: bool = True
    patterns: tuple[str, ...] = ()
    extra_values: tuple[str, ...] = ()
    cues: bool = True
    rare_zipf: float = RARE_ZIPF

    def __post_init__(self) -> None:
        if self.ngram < 0:
            raise ValueError(f"private spans: ngram must be >= 0 (0 = no copy detector), got {self.ngram}")
        if not 0.0 <= self.rare_zipf <= 8.0:
            raise ValueError(f"private spans: rare_zipf must be in [0, 8] (wordfreq's Zipf scale; 0 = off), "
                             f"got {self.rare_zipf}")
        for p in self.patterns:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"private spans: pattern {p!r} is not a valid regular expression: {e}") from None


@dataclass(frozen=True)
class Detection:
    """One private value found in the context."""

    text: str
    kind: str
    start: int = -1


def load_span_detector(path: str | Path, **overrides: Any) -> SpanDetector:
    """A :class:`SpanDetector` from a JSON, TOML or YAML file (a ``[private_spans]`` table is accepted)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"private spans config {p} does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        data = (tomllib.loads(text) if p.suffix == ".toml" else json.loads(text) if p.suffix == ".json"
                else yaml.safe_load(text))
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"private spans config {p}: {e}") from None
    if isinstance(data, dict) and isinstance(data.get("private_spans"), dict):
        data = data["private_spans"]
    if not isinstance(data, dict):
        raise ValueError(f"private spans config {p}: expected a table/object of SpanDetector fields")
    known = {f.name for f in fields(SpanDetector)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"private spans config {p}: unknown field(s) {unknown}; known: {sorted(known)}")
    data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    for k in ("patterns", "extra_values"):
        if k in data:
            if isinstance(data[k], str) or not isinstance(data[k], list | tuple):
                raise ValueError(f"private spans config {p}: {k} must be a list of strings")
            data[k] = tuple(str(x) for x in data[k])
    return SpanDetector(**data)


# --------------------------------------------------------------------------- detectors


def _pii(context: str) -> list[Detection]:
    # heavy (imports spaCy and transformers); the device imports them once, the first time it protects
    from presidio_analyzer import PatternRecognizer
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        DateRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        UrlRecognizer,
        UsSsnRecognizer,
    )

    recognisers = [PatternRecognizer("EMAIL_ADDRESS", patterns=EmailRecognizer.PATTERNS),
                   PatternRecognizer("URL", patterns=UrlRecognizer.PATTERNS),
                   PhoneRecognizer(), CreditCardRecognizer(), DateRecognizer(), IpRecognizer(), IbanRecognizer(),
                   UsSsnRecognizer()]
    out = []
    for r in recognisers:
        for res in r.analyze(context, r.supported_entities, None):
            out.append(Detection(context[res.start:res.end], "pii:" + res.entity_type.lower(), res.start))
    return out


def _regex(context: str, pattern: re.Pattern[str] | str, kind: str) -> list[Detection]:
    return [Detection(m.group(0).strip(" .,"), kind, m.start()) for m in re.finditer(pattern, context)
            if len(m.group(0).strip(" .,")) >= 2]


def _field_values(context: str) -> list[Detection]:
    """Values of profile fields (long ones and those of FREE_TEXT_KEYS are left to the free-text detectors)."""
    found, _ = line_fields(context)
    common = sentence_words()
    out: list[Detection] = []
    for f in [*found, *object_fields(context)]:
        value = f.value.strip(" \t\"'`,.{}[]")
        words = value.split()
        if not words:
            continue
        several_sentences = re.search(r"[.!?]\s+[A-Z]", value) is not None
        if f.key.lower().replace("_", " ").startswith(FREE_TEXT_KEYS) or len(words) > MAX_FACT_WORDS \
                or several_sentences:
            continue
        out.append(Detection(value, "field", f.start))
        for part in re.split(r"\s*(?:,|&|\band\b|\bwith\b|\bsince\b|\bin\b)\s*", value):
            part = part.strip(" .\"'")
            if len(part) >= 2 and part != value:
                out.append(Detection(part, "field", f.start))
            for w in part.split():
                w = w.strip(" .,\"'()")
                if len(w) >= 3 and w.lower() not in common:
                    out.append(Detection(w, "field", f.start))
    return out


def _sentence_start(context: str, start: int) -> bool:
    i = start - 1
    while i >= 0 and context[i] in " \t":
        i -= 1
    if i < 0:
        return True
    if context[i] not in SENTENCE_END:
        return False
    if context[i] == ".":  # "Dr. Patel": a title's dot ends no sentence
        prev = WORD_RE.findall(context[max(0, i - 12):i])
        if prev and prev[-1].lower() in TITLES:
            return False
    return True


def _names(context: str, masked: list[tuple[int, int]]) -> list[Detection]:
    """Capitalised words and runs of them (see the module docstring)."""
    common = sentence_words()
    lower_words = {m.group(0) for m in WORD_RE.finditer(context) if m.group(0).islower()}
    words = [m for m in WORD_RE.finditer(context) if not any(a <= m.start() < b for a, b in masked)]
    mid_sentence_caps = {m.group(0) for m in words if m.group(0)[:1].isupper() and not _sentence_start(context, m.start())}
    out: list[Detection] = []
    run: list[re.Match[str]] = []

    def close() -> None:
        if len(run) > 1:
            a, b = run[0].start(), run[-1].end()
            out.append(Detection(context[a:b], "name", a))
        run.clear()

    for k, m in enumerate(words):
        w = m.group(0)
        low = w.lower().rstrip("'’s") if w.lower().endswith(("'s", "’s")) else w.lower()
        prev = words[k - 1].group(0).lower() if k else ""
        after_title = prev in TITLES and context[words[k - 1].end():m.start()].strip() in (".", "")
        is_acronym = w.isupper() and 2 <= len(w) <= 5 and any(c.isalpha() for c in w)
        is_cap = w[0].isupper() and not w.isupper()
        private = False
        if low in NEVER_PRIVATE or not (is_cap or is_acronym or after_title and w[0].isupper()):
            private = False
        elif low in TITLES:  # "Dr" alone is no one; it joins the run of the name after it
            private = bool(run)
        elif after_title or is_acronym:
            private = True
        elif _sentence_start(context, m.start()):
            adverb = low.endswith("ly") and context[m.end():m.end() + 1] == ","  # "Honestly, ..."
            gerund = low.endswith("ing") and len(low) > 5 and w not in mid_sentence_caps  # "Working as ..."
            private = low not in common and low not in lower_words and not adverb and not gerund
        else:  # mid-sentence: a name unless a common word ("Mom", "March") that is also written lowercase
            private = low not in common
        if low in TITLES and w[0].isupper() and k + 1 < len(words) and words[k + 1].group(0)[:1].isupper():
            close()
            run.append(m)  # "Dr. Patel": the title joins the name's run without being a value alone
            continue
        if private:
            if run and (context[run[-1].end():m.start()].strip() not in ("", ".", "-")):
                close()
            run.append(m)
            out.append(Detection(w.rstrip("'’s") if low != w.lower() else w, "name", m.start()))
        elif run and low in JOINERS and k + 1 < len(words) and words[k + 1].group(0)[:1].isupper():
            continue
        else:
            close()
    close()
    return out


def _sensitive(context: str) -> list[Detection]:
    """Lexicon terms by root: the whole word (or phrase) as written in the context."""
    norm = " " + normalise(context) + " "
    out = []
    for cat, root in sensitive_terms():
        r = normalise(root)
        pattern = rf"(?<= ){re.escape(r)}(?= )" if len(r) <= 3 else rf"(?<= ){re.escape(r)}[a-z]*"
        for m in re.finditer(pattern, norm):
            out.append(Detection(m.group(0), "sensitive:" + cat, -1))
    return out


def _np_words(words: list[str], common: frozenset[str]) -> str:
    """The noun phrase of a cue: function and common words trimmed from both ends ("" if none is left)."""
    while words and words[0] in common:
        words = words[1:]
    while words and words[-1] in common:
        words = words[:-1]
    return " ".join(words)


def _cues(context: str) -> list[Detection]:
    """Noun phrases that contextual cues point at (see the module docstring). Why hand-written: the
    library that finds such phrases (spaCy's parser) needs a model that is not installable here."""
    common = sentence_words()
    out: list[Detection] = []
    after = rf"\b(?i:{'|'.join(CUES_AFTER)})\s+((?:{NP_WORD} ){{0,2}}{NP_WORD})"  # the cue in any case, the phrase lowercase
    for m in re.finditer(after, context):
        words = []
        for w in m.group(1).split():  # stop at the first function word: "court reporter in Tacoma"
            if w.lower() in common and words:
                break
            words.append(w.lower())
        np = _np_words(words, common)
        if np:
            out.append(Detection(np, "cue", m.start(1)))
    before = rf"\b((?:{NP_WORD} ){{1,2}})(?:{'|'.join(CUES_BEFORE)})\b"
    for m in re.finditer(before, context):
        words = m.group(1).split()
        cut = max((i + 1 for i, w in enumerate(words) if w in common), default=0)  # "the wage garnishment"
        np = _np_words(words[cut:], common)
        if np:
            out.append(Detection(np, "cue", m.start(1)))
    return out


def _rare(context: str, instruction: str, zipf: float) -> list[Detection]:
    """Words of the context rarer than ``zipf`` (wordfreq) that the instruction does not use."""
    common = sentence_words()
    public = set(normalise(instruction).split())
    out: list[Detection] = []
    seen: dict[str, bool] = {}
    for m in WORD_RE.finditer(context):
        w = m.group(0).rstrip("'’")
        low = w.lower()
        if len(low) < 4 or not low.replace("-", "").replace("'", "").isalpha() or low in common:
            continue
        if low not in seen:
            seen[low] = normalise(low) not in public and zipf_frequency(low, "en") < zipf
        if seen[low]:
            out.append(Detection(w, "rare", m.start()))
    return out


def detect(context: str, detector: SpanDetector | None = None, instruction: str = "") -> list[Detection]:
    """Every private value the device finds in its own context (see the module docstring);
    ``instruction`` (what the cloud is told anyway) only exempts its words from the rare-word rule."""
    det = detector or SpanDetector()
    out: list[Detection] = [Detection(v, "user") for v in det.extra_values if v.strip()]
    if not det.values:
        return out
    _, key_ranges = line_fields(context)
    out += _field_values(context)
    if det.pii:
        out += _pii(context)
    out += _regex(context, NUMBER_RE, "number") + _regex(context, DATE_RE, "date")
    out += _regex(context, ADDRESS_RE, "address")
    out += [d for p in det.patterns for d in _regex(context, p, "user")]
    if det.names:
        out += _names(context, key_ranges)
    if det.sensitive:
        out += _sensitive(context)
    if det.cues:
        out += _cues(context)
    if det.rare_zipf > 0:
        out += _rare(context, instruction, det.rare_zipf)
    return out


def context_values(context: str, detector: SpanDetector | None = None, extra: Iterable[str] = (),
                   instruction: str = "") -> list[str]:
    """The distinct private value strings of :func:`detect` (plus ``extra``), in order found."""
    vals = [d.text.strip() for d in detect(context, detector, instruction)] + [str(v).strip() for v in extra]
    return list(dict.fromkeys(v for v in vals if len(normalise(v)) >= 2 or any(c.isdigit() for c in v)))
