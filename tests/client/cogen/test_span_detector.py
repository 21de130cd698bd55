"""The private-span detector on contexts users actually have (not our generator's format), the guard's
inflection matching, the user's own patterns/values, and the CLI/config plumbing."""

from __future__ import annotations

import argparse
import json

import pytest

from fedcogen.cli.common import add_decoding_args, decoding_settings
from fedcogen.client.cogen.private_spans import PrivateSpanGuard, context_values
from fedcogen.client.cogen.span_detector import SpanDetector, detect, load_span_detector
from fedcogen.models import load_tokenizer

# the issue's example: CoGenesis-style profile + free-text history (main found 4 of these values)
COGENESIS = ("Name: Maria Lopez; Location: Austin, TX; Occupation: nurse; Privacy_info: diabetic; divorced in 2019\n"
             "Writing history:\nCarlos finally took the kids on Sunday. Dr. Patel says my A1C is better now.")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def _sent(tok, guard: PrivateSpanGuard, text: str) -> str:
    out: list[int] = []
    for t in tok(text + "\n", add_special_tokens=False)["input_ids"]:
        out += guard.commit(t)
    return tok.decode(out)


def test_issue_example_every_value_found():
    vals = context_values(COGENESIS)
    for v in ("Maria", "Lopez", "Austin", "TX", "nurse", "diabetic", "divorced", "2019", "Carlos", "Dr. Patel",
              "Patel", "A1C"):
        assert v in vals, (v, vals)
    for public in ("Name", "Location", "Occupation", "Privacy_info", "Writing", "Sunday"):
        assert public not in vals, public  # keys and common words are not private


@pytest.mark.parametrize("context", [
    '{"user": {"full_name": "Nadia Haddad", "home_city": "Akron, OH", "medical": "glaucoma"}}',
    "full_name: Nadia Haddad\nhome_city: Akron, OH\nmedical: glaucoma\n",
    "- Full_Name = Nadia Haddad\n- Home_City = Akron, OH\n- Medical = glaucoma",
    "**Full name**: Nadia Haddad\n**Home city**: Akron, OH\n**Medical**: glaucoma",
    "conditions:\n  - glaucoma\nname: Nadia Haddad\ncity: Akron, OH",
])
def test_profile_in_any_key_style(context):
    vals = context_values(context)
    for v in ("Nadia", "Haddad", "Akron", "OH", "glaucoma"):
        assert v in vals, (v, context, vals)


def test_free_text_names_sentence_starts_titles_and_lowercase_facts():
    text = ("Teodor called. Yesterday, Rosalind said Dr. Kaplan wants to see me; my depression is back and the "
            "eviction notice came. Honestly, I can't sleep.")
    kinds: dict[str, str] = {}
    for d in detect(text):  # the first detector to find a value names its kind (rare/cue may find it again)
        kinds.setdefault(d.text, d.kind)
    assert kinds["Teodor"] == "name" and kinds["Rosalind"] == "name"  # sentence start, after a comma
    assert "Dr. Kaplan" in kinds and kinds["Kaplan"] == "name"
    assert kinds["depression"].startswith("sensitive:health")
    assert kinds["eviction"].startswith("sensitive:finances")
    assert "Yesterday" not in kinds and "Honestly" not in kinds and "I" not in kinds


def test_numbers_dates_addresses_emails_phones():
    text = "Mail nadia.h@example.org or call (330) 555-0199. Rent of $1,250 is due March 14 at 47 Harbor Way."
    found = {d.text for d in detect(text)}
    for v in ("nadia.h@example.org", "(330) 555-0199", "$1,250", "March 14", "47 Harbor Way"):
        assert v in found, (v, found)


def test_user_patterns_and_values_and_switches():
    det = SpanDetector(patterns=(r"\bcase #\d+",), extra_values=("the blue house",), names=False, rare_zipf=0)
    vals = context_values("see case #4411 at the blue house with Teodor", det)
    assert "case #4411" in vals and "the blue house" in vals and "Teodor" not in vals
    assert context_values("Teodor", SpanDetector(values=False, extra_values=("x1",))) == ["x1"]
    with pytest.raises(ValueError, match="not a valid regular expression"):
        SpanDetector(patterns=("(",))


def test_guard_withholds_inflections_the_context_never_wrote(tok):
    guard = PrivateSpanGuard.for_context(tok, COGENESIS)
    sent = _sent(tok, guard, "Managing diabetes after the divorce is hard, Maria's nursing shifts too.")
    for word in ("diabetes", "divorce", "maria", "nursing"):
        assert word not in sent.lower(), (word, sent)
    assert "Managing" in sent and "is hard" in sent  # public words still go out


def test_guard_holds_a_word_that_could_become_private_and_releases_it(tok):
    guard = PrivateSpanGuard.for_context(tok, "Occupation: nurse")
    sent = _sent(tok, guard, "The nurture of plants opens at nine.")
    assert "nurture" in sent  # began like "nurse", diverged before the near-word rule's shared prefix
    # "nursery" shares "nurse" whole: the fact audit counts it as the fact, so the guard withholds it
    assert "nursery" not in _sent(tok, PrivateSpanGuard.for_context(tok, "Occupation: nurse"), "The nursery opens.")


def test_config_file_and_cli_flags(tmp_path):
    cfg = tmp_path / "spans.json"
    cfg.write_text(json.dumps({"patterns": [r"ID-\d+"], "extra_values": ["Aunt Bea"], "ngram": 4}))
    det = load_span_detector(cfg)
    assert det.patterns == (r"ID-\d+",) and det.extra_values == ("Aunt Bea",) and det.ngram == 4
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"patern": ["x"]}))
    with pytest.raises(ValueError, match="unknown field"):
        load_span_detector(bad)
    p = argparse.ArgumentParser()
    add_decoding_args(p)
    args = p.parse_args(["--private-spans", str(cfg), "--private-value", "Rex", "--private-pattern", r"X\d"])
    spans = decoding_settings(args)["private_spans"]
    assert spans.extra_values == ("Aunt Bea", "Rex") and spans.patterns == (r"ID-\d+", r"X\d")
    assert "private_spans" not in decoding_settings(p.parse_args([]))


# --------------------------------------------------------------------------- rules that generalise (issue 23)
# the words below are in no lexicon list and in no corpus split: only the cue, rarity and near-word rules find them


@pytest.mark.parametrize(("text", "value"), [
    ("Since last year I work as a tower climber in town.", "tower climber"),
    ("She was diagnosed with sarcoidosis in May.", "sarcoidosis"),
    ("He suffers from cluster headaches, poor thing.", "cluster headaches"),
    ("I still owes the county a small fortune.", "county"),
    ("The lien notice arrived on Friday.", "lien"),
    ("My gout flared up again.", "gout"),
])
def test_contextual_cues_find_the_phrase_whatever_its_words(text, value):
    found = {d.text for d in detect(text, SpanDetector(rare_zipf=0)) if d.kind == "cue"}
    assert value in found, (value, found)


def test_cue_phrase_stops_at_function_words_and_capitals():
    found = {d.text for d in detect("Working as a tower climber in Tacoma for Ridge Co.", SpanDetector(rare_zipf=0))
             if d.kind == "cue"}
    assert "tower climber" in found and not any("tacoma" in f.lower() or " in" in f for f in found), found
    assert not [d for d in detect("It was a good day.", SpanDetector(rare_zipf=0)) if d.kind == "cue"]


def test_rare_words_are_private_unless_the_instruction_uses_them():
    text = "Ugh, sarcoidosis again today; the lovely weather did not help."
    rare = {d.text for d in detect(text) if d.kind == "rare"}
    assert "sarcoidosis" in rare and "lovely" not in rare and "weather" not in rare
    told = {d.text for d in detect(text, instruction="Explain sarcoidosis to a friend.") if d.kind == "rare"}
    assert "sarcoidosis" not in told  # the cloud holds the instruction anyway
    assert not [d for d in detect(text, SpanDetector(rare_zipf=0)) if d.kind == "rare"]
    with pytest.raises(ValueError, match="rare_zipf"):
        SpanDetector(rare_zipf=9.0)


@pytest.mark.parametrize(("context", "written", "private"), [
    ("Privacy_info: anemic", "Her anemia is mild.", "anemia"),
    ("Privacy_info: anxiety", "She is anxious today.", "anxious"),
    ("Notes: the garnishment letter came", "They garnished it.", "garnished"),
])
def test_guard_withholds_words_the_audit_counts_as_near(tok, context, written, private):
    """The stemmer makes "anemia"/"anemic" two roots; the guard's near-word rule (the audit's shared
    prefix) withholds them anyway, while common words pass."""
    sent = _sent(tok, PrivateSpanGuard.for_context(tok, context), written)
    assert private not in sent, (private, sent)
    assert written.split()[0] in sent, sent


def test_guard_passes_the_instruction_to_the_rare_word_rule(tok):
    ctx = "Ugh, sarcoidosis is the worst."
    assert "sarcoidosis" in PrivateSpanGuard.for_context(tok, ctx).values
    assert "sarcoidosis" not in PrivateSpanGuard.for_context(tok, ctx, instruction="What is sarcoidosis?").values
