"""Private-span detector: no private value token is ever released, placeholders carry no private bytes,
held tokens are released once a would-be value diverges, copied context runs are withheld."""

from __future__ import annotations

import pytest

from fedcogen import dataset as d
from fedcogen.client.cogen.private_spans import PLACEHOLDER, PrivateSpanGuard, SpanDetector, context_values
from fedcogen.protocols import cogen_pb2 as pb

CONTEXT = ("me: Bjorn Oyelaran\nstyle: formal\nhome city: Malmo\nemployer: Saffron Biotech\nhealth: eczema\n"
           "a recent email of mine: \"Hi Eskil, the boiler repair bill of €2,623 is paid.\"")
VALUES = ["Bjorn Oyelaran", "Bjorn", "Oyelaran", "Malmo", "Saffron Biotech", "eczema", "Eskil", "€2,623"]


@pytest.fixture(scope="module")
def tok():
    from fedcogen.models import load_tokenizer

    return load_tokenizer("tiny")


def _run(tok, guard: PrivateSpanGuard, text: str) -> list[int]:
    sent: list[int] = []
    for t in tok(text, add_special_tokens=False)["input_ids"]:
        sent += guard.commit(t)
    return sent


def test_context_values_finds_profile_lines_names_and_money():
    vals = context_values(CONTEXT)
    for v in VALUES:
        assert v in vals, v
    assert "formal" not in vals  # the style line is free text, not a fact


def test_no_private_value_is_ever_released(tok):
    text = ("Hi all, I'm Bjorn Oyelaran from Malmo. At Saffron Biotech we cope with eczema, and Eskil paid "
            "€2,623 for the boiler. Dr. Smith agrees. Bjorn")
    guard = PrivateSpanGuard.for_context(tok, CONTEXT)
    sent = tok.decode(_run(tok, guard, text))
    for v in VALUES:
        assert v.lower() not in sent.lower(), (v, sent)
    assert "Hi all" in sent and "Dr. Smith agrees" in sent  # public text still goes out
    assert guard.private_tokens > 0 and guard.placeholders >= 4


def test_every_prefix_of_the_released_stream_is_clean(tok):
    """Checked after each commit: a value's first tokens never go out before the detector knows."""
    guard = PrivateSpanGuard.for_context(tok, CONTEXT)
    sent: list[int] = []
    for t in tok(" Malmo and Malmoe, Saffron Biotech", add_special_tokens=False)["input_ids"]:
        sent += guard.commit(t)
        text = tok.decode(sent).lower()
        assert "malmo " not in text + " " and "saffron" not in text and "biotech" not in text, text


def test_held_prefix_is_released_when_it_diverges(tok):
    guard = PrivateSpanGuard.for_context(tok, CONTEXT)
    sent = tok.decode(_run(tok, guard, "We met Bjarne today."))
    assert "Bjarne" in sent  # began like "Bjorn", then diverged: released
    assert guard.synced or not sent.endswith("today.")


def test_copied_context_run_is_withheld(tok):
    ctx = "a recent email of mine: \"the quarterly numbers for the harbour project look much better now\""
    guard = PrivateSpanGuard.for_context(tok, ctx, detector=SpanDetector(values=False, ngram=4))
    sent = tok.decode(_run(tok, guard, "Update: the quarterly numbers for the harbour project look much better now."))
    assert "harbour project" not in sent
    assert sent.startswith("Update")


def test_placeholder_never_carries_private_bytes(tok):
    fed = d.generate_federation(d.FederationConfig(n_users=4, seed=3))
    guard = PrivateSpanGuard.for_context(tok, fed.tasks_of(d.user_ids(fed)[0], "test")[0].private_context)
    placeholder = tok.decode(guard.placeholder_ids)
    assert placeholder == PLACEHOLDER
    wire = pb.DecodeRequest(step=pb.TokenStep(token_ids=guard.placeholder_ids)).SerializeToString()
    for p in fed.profiles:
        for v in p.private_values:
            assert v.lower() not in placeholder.lower()
            assert v.encode() not in wire
    for canaries in fed.canaries.values():
        for c in canaries:
            assert c.split()[-1] not in placeholder


def test_synced_only_when_the_cloud_has_every_committed_token(tok):
    guard = PrivateSpanGuard.for_context(tok, CONTEXT)
    ids = tok(" I live in Malmo now", add_special_tokens=False)["input_ids"]
    states = []
    for t in ids:
        guard.commit(t)
        states.append(guard.synced)
    assert states[0] and not all(states) and states[-1]  # device alone inside the span, fusing after
    assert tok.decode(guard.sent) == " I live in ... now"


def test_value_token_run_inside_another_word_is_withheld(tok):
    """The wire audit also searches token-id runs: "Lior" inside "Liordi" must not go out either."""
    guard = PrivateSpanGuard.for_context(tok, "me: Ana Silva", extra_values=["Lior"])
    sent_ids = _run(tok, guard, "Hi Liordi, how are you?")
    for text in ("Lior", " Lior"):
        run = tok(text, add_special_tokens=False)["input_ids"]
        assert not any(sent_ids[i:i + len(run)] == run for i in range(len(sent_ids))), tok.decode(sent_ids)
    assert "how are you" in tok.decode(sent_ids)
