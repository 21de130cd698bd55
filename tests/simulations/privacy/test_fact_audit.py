"""The fact audit reads an answer key the guard never gets, matches near forms and token ids, and the
protection path sends 0 facts on every corpus (dev split, scripted device) while the unprotected run fails."""

from __future__ import annotations

import json

import pytest

from fedcogen.cli import main
from fedcogen.client.cogen.span_detector import SpanDetector
from fedcogen.models import load_tokenizer
from fedcogen.simulations.privacy import span_audit as sa
from fedcogen.simulations.privacy.fact_audit import (
    CORPORA,
    SPLITS,
    Fact,
    audit_facts,
    load_contexts,
    load_corpus,
    measure_detector,
)

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def test_near_matches_inflection_case_and_punctuation(tok):
    facts = [Fact("diabetic", "health", "diabetes"), Fact("Maria Lopez", "name"), Fact("divorced in 2019", "family")]
    res = audit_facts(facts, texts=["Living with DIABETES; maria's fine", "the divorce, 2019"])
    assert [r["seen"] for r in res] == [True, True, True]
    res = audit_facts([Fact("diabetic", "health")], texts=["Managing diabetes daily"])  # no variant given
    assert res[0]["seen"] and "text:near" in res[0]["found_in"]
    clean = audit_facts(facts + [Fact("Moretti", "name")], texts=["Living with it; she is fine, more", "the news"])
    assert not any(r["seen"] for r in clean)


def test_token_ids_on_the_wire_count(tok):
    ids = tok(" I met Esperanza today", add_special_tokens=False)["input_ids"]
    res = audit_facts([Fact("Esperanza", "name")], streams=[ids], tokenizer=tok)
    assert res[0]["seen"] and "token_ids" in res[0]["found_in"]
    assert not audit_facts([Fact("Esperanza", "name")], streams=[ids], tokenizer=None)[0]["seen"]


def test_contexts_carry_no_answer_key():
    for name in CORPORA:
        items = load_contexts(name, "test")
        assert items and all(it.facts == [] for it in items)
        assert {it.split for it in load_contexts(name)} == {"dev", "test", "heldout2"}
    with pytest.raises(ValueError, match="no span corpus"):
        load_contexts("nope")


def test_splits_share_no_vocabulary():
    """The held-out split is written from other names, places and conditions than the dev split (US state
    codes excepted: there are only so many)."""
    for name in CORPORA:
        vocab = {split: {f.text for it in load_corpus(name, split) for f in it.facts
                         if f.kind not in ("date", "address", "phone")} for split in SPLITS}
        for a, b in (("dev", "test"), ("dev", "heldout2"), ("test", "heldout2")):
            shared = {v for v in vocab[a] & vocab[b] if not v.isdigit() and not (v.isupper() and len(v) == 2)}
            assert vocab[a] and vocab[b] and not shared, (name, a, b, shared)


def test_detector_measured_per_corpus(tok):
    for name in CORPORA:
        r = measure_detector(tok, load_corpus(name, "dev"))
        assert r["facts"] > 50 and r["recall"] == 1.0 and r["precision"] > 0.8, (name, r["missed"], r["precision"])
        # its cost: well under half of the context withheld (a detector that withheld it all would have recall 1)
        assert r["tokens"] > r["tokens_withheld"] > 0 and 0.1 < r["withheld_share"] < 0.45, (name, r["withheld_share"])


def test_withholding_everything_shows_in_precision_and_share(tok):
    """The precision/share figures can fail: a detector whose user pattern takes every word is flagged."""
    items = load_corpus("freetext", "dev")[:2]
    r = measure_detector(tok, items, SpanDetector(patterns=(r"\w+",)))
    assert r["recall"] == 1.0 and r["withheld_share"] > 0.7 and r["precision"] < 0.5, r


def test_guard_never_receives_the_answer_key(monkeypatch):
    """The old audit handed generate_batch the very values it searched for (private_values=...)."""
    calls = []

    class Dev:
        def generate_batch(self, pairs, variant, **kw):
            calls.append(kw)
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        sa.audit_setting(Dev(), [], None, "logit")
    assert calls == [{}]


def test_wire_zero_facts_with_protection_and_leaks_without():
    """Over real gRPC: logit and gated on each corpus (dev split, 2 items each), the device writes every
    fact (half in an inflected form); the guard knows only the contexts."""
    res = sa.run_corpus_audit(sa.CorpusAuditConfig(split="dev", wire_items=2))
    for name in CORPORA:
        wire = res["corpora"][name]["wire"]
        for v in ("logit", "gated"):
            assert wire[f"{v}/off"]["facts_on_wire"] == wire[f"{v}/off"]["facts"] > 0, (name, v)
            on = wire[f"{v}/on"]
            seen = [f for it in on["per_item"] for f in it["facts"] if f["seen"]]
            assert on["facts_on_wire"] == 0, (name, v, seen)
            assert on["private_tokens_withheld"] > 0
    assert res["protected_zero"] and res["unprotected_leaks"]


def test_corpora_command_prints_the_table_and_records_the_commit(tmp_path, capsys):
    out = tmp_path / "c.json"
    assert main(["privacy", "corpora", "--split", "dev", "--no-wire", "--corpora", "cogenesis,freetext",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| cogenesis | 12 |" in text and "| freetext | 12 |" in text and "structured" not in text
    res = json.loads(out.read_text())
    assert res["split"] == "dev" and set(res["corpora"]) == {"cogenesis", "freetext"}
    assert "commit" in res and res["corpora"]["cogenesis"]["detector"]["recall"] == 1.0
