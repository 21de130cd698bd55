"""Text normalisation for matching private values, facts and style markers.

One normaliser for the whole project: the data generator's leak check, the wire audit and the
evaluation's fact recall / leakage metrics must agree on what "contains" means, or a value could
count as leaked in one report and as absent in another.
"""

from __future__ import annotations

import re
import unicodedata

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalise(text: str) -> str:
    """Lower-case, NFKC-fold, turn every run of punctuation/whitespace into one space, strip.

    Both the fact and the answer go through this, so "Dr. Okafor's" matches "dr okafor s" and
    "12:30" matches "12.30"; differences in punctuation or line breaks never decide a match.
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    return _NON_WORD.sub(" ", text).strip()


def contains_normalised(haystack_norm: str, value: str) -> bool:
    """Whole-word containment of ``value`` in a text already passed through :func:`normalise`.

    An empty value (after normalisation) never matches: it carries no information.
    """
    needle = normalise(value)
    return bool(needle) and f" {needle} " in f" {haystack_norm} "


def contains_phrase(text: str, phrase: str, *, whole_words: bool = True) -> bool:
    """Whether ``phrase`` occurs in ``text`` after :func:`normalise`.

    ``whole_words`` demands word boundaries ("Ann" does not match "Anna"); leakage checks turn it
    off because wire bytes may glue framing characters onto the first or last word of a string.
    """
    if whole_words:
        return contains_normalised(normalise(text), phrase)
    p = normalise(phrase)
    return bool(p) and p in normalise(text)
