"""Metrics, bootstrap CIs, aggregation and report of the evaluation toolkit (no models).

The generator here is a deterministic in-test fake: this file checks the arithmetic (ROUGE-L,
fact recall, style, leakage, per-user-then-overall means, CIs) against values computed by hand.
ROUGE-L F1 = 2*LCS / (len(prediction) + len(reference)) in tokens (rouge-score tokenises to
lower-case alphanumeric words; all words used here are <= 3 letters or unchanged by stemming).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fedcogen.simulations.evaluation import metrics as m
from fedcogen.simulations.evaluation.evaluate import EvalAnswer, EvalConfig, evaluate
from fedcogen.simulations.evaluation.report import write_report

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


@dataclass
class Task:
    task_id: str
    user_id: str
    instruction: str
    private_context: str
    reference: str
    private_facts: list[str]
    task_type: str | None = None


def load_fixture_tasks() -> list[Task]:
    rows = [json.loads(line) for line in (FIXTURES / "eval_tasks.jsonl").read_text().splitlines()]
    return [Task(**r) for r in rows]


# --- text metrics ------------------------------------------------------------------------------


def test_rouge_l_matches_hand_computed_lcs():
    assert m.rouge_l_f1("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    # LCS("the cat lay on a mat", "the cat sat on the mat") = the cat on mat = 4 -> 8/12
    assert m.rouge_l_f1("the cat lay on a mat", "the cat sat on the mat") == pytest.approx(8 / 12)
    assert m.rouge_l_f1("dog", "the cat sat") == 0.0
    assert m.rouge_l_f1("", "the cat sat") == 0.0


@pytest.mark.parametrize(
    ("text", "fact", "expected"),
    [
        ("Dr Okafor's note", "Dr. Okafor", True),  # punctuation normalised
        ("see DR.   OKAFOR\ntoday", "dr okafor", True),  # case and whitespace
        ("Anna came", "Ann", False),  # whole words only
        ("meet at 12:30", "12.30", True),
        ("nothing here", "  ...  ", False),  # empty after normalisation never matches
        ("Zoë's café", "zoe s cafe", False),  # accents are kept (NFKC does not strip them)
        ("Zoë's café", "ZOË'S CAFÉ", True),
    ],
)
def test_contains_phrase(text, fact, expected):
    assert m.contains_phrase(text, fact) is expected


def test_fact_recall_fraction_and_none_without_facts():
    assert m.private_fact_recall("Dr. Okafor on Tuesday", ["Dr. Okafor", "Tuesday", "Blue Fern"]) == pytest.approx(
        2 / 3
    )
    assert m.private_fact_recall("anything", []) is None
    assert m.private_fact_recall("anything", None) is None


def test_style_match_scores_only_defined_markers():
    markers = m.StyleMarkers(greeting="Dear", sign_off="Cheers", favourite_phrases=("no worries", "ta"))
    s = m.style_match("Dear Sam, ... Cheers", markers)
    assert (s.greeting, s.sign_off, s.favourite_phrase) == (True, True, False)
    assert s.score == pytest.approx(2 / 3)
    only_phrase = m.StyleMarkers(favourite_phrases=("no worries",))
    assert m.style_match("No worries!", only_phrase).score == 1.0
    assert m.style_match("text", None).score is None
    assert m.style_match("text", m.StyleMarkers()).score is None


def test_style_markers_from_profile_spellings():
    nested = m.StyleMarkers.from_profile({"style": {"greeting": "Hi", "signoff": "Best", "phrases": "ta"}})
    assert nested == m.StyleMarkers("Hi", "Best", ("ta",))
    flat = m.StyleMarkers.from_profile({"greeting": "Yo", "favorite_phrases": ["a", " "]})
    assert flat == m.StyleMarkers("Yo", None, ("a",))
    assert m.StyleMarkers.from_profile({"user_id": "x"}).empty


def test_leakage_found_in_protobuf_like_bytes():
    facts = ["Dr. Okafor", "Tuesday", "Blue Fern"]
    # field tag + length byte glued to the string, non-UTF-8 bytes around it
    wire = [b"\x0a\x0bXDr. Okafor\xff\xfe", b"\x12\x03abc", "blue  FERN"]
    assert m.leaked_facts(wire, facts) == ["Dr. Okafor", "Blue Fern"]
    assert m.leaked_facts(b"", facts) == []
    assert m.leaked_facts(None, facts) is None  # not captured != no leak


# --- confidence intervals ----------------------------------------------------------------------


def test_bootstrap_ci_contains_mean_is_seeded_and_shrinks_with_users():
    rng = np.random.default_rng(1)
    small = rng.normal(0.5, 0.2, size=8)
    large = rng.normal(0.5, 0.2, size=400)
    ci_small = m.bootstrap_ci(small, seed=3)
    ci_large = m.bootstrap_ci(large, seed=3)
    for ci, vals in ((ci_small, small), (ci_large, large)):
        assert ci.low <= ci.mean <= ci.high
        assert ci.mean == pytest.approx(float(np.mean(vals)))
        assert ci.resamples == 1000 and ci.confidence == 0.95
    assert ci_large.width < ci_small.width / 3  # ~ 1/sqrt(50) ratio in theory
    assert m.bootstrap_ci(small, seed=3) == ci_small
    assert m.bootstrap_ci(small, seed=4) != ci_small


def test_bootstrap_degenerate_cases():
    one = m.bootstrap_ci([0.7])
    assert (one.mean, one.low, one.high, one.n) == (0.7, 0.7, 0.7, 1) and "one user" in one.note
    none = m.bootstrap_ci([])
    assert none.n == 0 and math.isnan(none.mean) and none.fmt() == "n/a"
    with pytest.raises(ValueError, match="confidence"):
        m.bootstrap_ci([1, 2], confidence=1.5)


def test_paired_difference_tells_variants_apart_only_when_real():
    rng = np.random.default_rng(0)
    users = [f"u{i}" for i in range(30)]
    base = {u: float(x) for u, x in zip(users, rng.uniform(0, 1, 30), strict=True)}
    better = {u: v + 0.05 + float(rng.normal(0, 0.01)) for u, v in base.items()}
    noisy = {u: v + float(rng.normal(0, 0.05)) for u, v in base.items()}
    d = m.paired_difference_ci(better, base, names=("better", "base", "rouge_l"))
    assert d.ci.excludes_zero() and d.ci.low > 0 and d.to_dict()["distinguishable"] is True
    # unpaired CIs of the two variants overlap heavily (between-user spread is large) ...
    a, b = m.bootstrap_ci(list(better.values())), m.bootstrap_ci(list(base.values()))
    assert a.low < b.high
    # ... and pure noise is not called a difference
    assert not m.paired_difference_ci(noisy, base).ci.excludes_zero()
    # only shared users with values are paired
    partial = m.paired_difference_ci({"u0": 1.0, "u1": None, "x": 3.0}, {"u0": 0.5, "u1": 0.2})
    assert partial.users == ["u0"] and partial.ci.mean == 0.5


# --- evaluation over a fixture with a deterministic generator ------------------------------------

OUTPUTS = {
    # variant "good"
    ("A", "good"): "Dear Sam, Dr. Okafor moved the visit to Tuesday. Cheers, Ana",  # = reference
    ("B", "good"): "Meet me at the Blue Fern cafe at noon, no worries",  # LCS 9, lens 11 + 9
    ("C", "good"): "The lake house key is under the red pot",  # = reference
    # variant "bad"
    ("A", "bad"): "Dear Sam, the visit moved. Cheers",  # LCS 5 (dear sam the visit cheers), 6 + 11
    ("B", "bad"): "see you soon",  # LCS 0
    ("C", "bad"): "the key is under the pot",  # LCS 6, lens 6 + 9
}
GOOD_WIRE = {"A": b"\x0a\x1dWrite to Sam about the visit.", "B": [b"\x12\x05hello", "Blue Fern cafe"], "C": b""}


class FakeGenerator:
    """Deterministic answers and costs; 'good' has a wire capture, 'bad' has none."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def generate(self, task: Task, variant: str) -> EvalAnswer:
        self.calls.append((task.task_id, variant))
        if variant == "boom":
            raise RuntimeError("cloud unreachable")
        good = variant == "good"
        return EvalAnswer(
            text=OUTPUTS[(task.task_id, variant)],
            tokens=10,
            tokens_per_s=20.0 if good else 40.0,
            bytes_sent=100 if good else 0,
            bytes_received=50 if good else 0,
            cloud_call_fraction=1.0 if good else 0.0,
            latency_s={"A": 1.0, "B": 2.0, "C": 4.0}[task.task_id] if good else 0.5,
            fell_back=False,
            cloud_received=GOOD_WIRE[task.task_id] if good else None,
            # 'good' counts like draft_edit: 6 of an 8-token draft kept, 4 written, 5 device forwards
            draft_tokens=8 if good else 0, draft_accepted=6 if good else 0, device_written=4 if good else 0,
            device_passes=5 if good else 0,
        )


@pytest.fixture(scope="module")
def result():
    tasks = load_fixture_tasks()
    profiles = {"u1": m.StyleMarkers(greeting="Dear", sign_off="Cheers", favourite_phrases=("no worries",))}
    return evaluate(tasks, FakeGenerator(), ["good", "bad"], profiles=profiles,
                    config=EvalConfig(progress=False, resamples=500))


def test_per_task_rows_match_hand_computation(result):
    rows = {(r["task_id"], r["variant"]): r for r in result.rows}
    assert len(rows) == 6
    assert rows["A", "good"]["rouge_l"] == pytest.approx(1.0)
    assert rows["B", "good"]["rouge_l"] == pytest.approx(18 / 20)
    assert rows["A", "bad"]["rouge_l"] == pytest.approx(10 / 17)
    assert rows["B", "bad"]["rouge_l"] == 0.0
    assert rows["C", "bad"]["rouge_l"] == pytest.approx(12 / 15)
    assert [rows[t, "good"]["fact_recall"] for t in "ABC"] == [1.0, 1.0, 1.0]
    assert [rows[t, "bad"]["fact_recall"] for t in "ABC"] == [0.0, 0.0, 0.0]
    # u1: greeting+sign-off in A (2/3), favourite phrase only in B (1/3); u2 has no profile
    assert rows["A", "good"]["style_match"] == pytest.approx(2 / 3)
    assert rows["B", "good"]["style_match"] == pytest.approx(1 / 3)
    assert rows["C", "good"]["style_match"] is None
    assert [rows[t, "good"]["leaked_facts"] for t in "ABC"] == [0, 1, 0]
    assert rows["B", "good"]["leaked"] == ["Blue Fern"]
    assert rows["A", "bad"]["leaked_facts"] is None
    assert rows["A", "good"]["bytes_total"] == 150


def test_means_are_per_user_then_over_users(result):
    u1, u2 = result.per_user["good"]["u1"], result.per_user["good"]["u2"]
    assert u1["rouge_l"] == pytest.approx(0.95) and u2["rouge_l"] == pytest.approx(1.0)
    assert u1["n_tasks"] == 2 and u2["n_tasks"] == 1
    good, bad = result.overall["good"], result.overall["bad"]
    assert good["rouge_l"].mean == pytest.approx(0.975)  # task mean would be 0.9667
    assert bad["rouge_l"].mean == pytest.approx((5 / 17 + 0.8) / 2)
    assert good["fact_recall"].mean == 1.0 and bad["fact_recall"].mean == 0.0
    assert good["style_match"].mean == pytest.approx(0.5) and good["style_match"].n == 1
    assert good["leaked_facts"].mean == pytest.approx(0.25)  # u1 0.5, u2 0
    assert bad["leaked_facts"].n == 0
    assert good["latency_s"].mean == pytest.approx((1.5 + 4.0) / 2)
    assert good["bytes_total"].mean == 150 and bad["bytes_total"].mean == 0
    for ci in (good["rouge_l"], bad["rouge_l"], good["latency_s"]):
        assert ci.low <= ci.mean <= ci.high and ci.n == 2


def test_paired_differences_and_notes(result):
    pair = {(p.variant_a, p.variant_b, p.metric): p for p in result.paired}
    d = pair["good", "bad", "rouge_l"]
    assert d.users == ["u1", "u2"]
    assert d.ci.mean == pytest.approx(((0.95 - 5 / 17) + (1.0 - 0.8)) / 2)
    assert d.ci.excludes_zero() and not d.distinguishable  # 2 users: too few to claim a difference
    assert ("good", "bad", "leaked_facts") not in pair  # bad has no capture: nothing to pair
    notes = "\n".join(result.notes)
    assert "style match only for 1 of 2 users" in notes
    assert "bad: leakage not measured" in notes


def test_generator_errors_are_recorded_not_averaged():
    tasks = load_fixture_tasks()
    res = evaluate(tasks, FakeGenerator(), ["good", "boom"], config=EvalConfig(progress=False, resamples=50))
    boom = [r for r in res.rows if r["variant"] == "boom"]
    assert len(boom) == 3 and all("cloud unreachable" in r["error"] for r in boom)
    assert res.overall["boom"]["rouge_l"].n == 0
    assert any("boom: 3 of 3 generations failed" in n for n in res.notes)
    assert "style match skipped" in res.notes[0]
    with pytest.raises(RuntimeError, match="cloud unreachable"):
        evaluate(tasks, FakeGenerator(), ["boom"], config=EvalConfig(progress=False, fail_fast=True))
    with pytest.raises(ValueError, match="no tasks"):
        evaluate([], FakeGenerator(), ["good"])
    with pytest.raises(ValueError, match="duplicate"):
        evaluate(tasks, FakeGenerator(), ["good", "good"])


def test_json_and_report_written(result, tmp_path):
    data = json.loads(json.dumps(result.to_dict()))  # JSON-serialisable, round-trips
    assert data["overall"]["good"]["rouge_l"]["mean"] == pytest.approx(0.975)
    assert {p["metric"] for p in data["paired"]} >= {"rouge_l", "fact_recall"}
    assert len(data["rows"]) == 6 and data["rows"][0]["text"]
    report = write_report(data, tmp_path / "out" / "report.md")
    text = report.read_text()
    assert "| good | 2 | 0.975 [" in text
    assert "| good | bad | rouge_l | 2 |" in text and "too few users" in text
    for png in ("report_quality_vs_bytes.png", "report_latency.png"):
        f = tmp_path / "out" / png
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({png})" in text


def test_draft_counts_give_acceptance_and_passes_per_token(result, tmp_path):
    for r in result.rows:
        if r["variant"] == "good":
            assert (r["draft_tokens"], r["draft_accepted"], r["device_written"], r["device_passes"]) == (8, 6, 4, 5)
            assert r["draft_acceptance"] == pytest.approx(0.75) and r["passes_per_token"] == pytest.approx(0.5)
        else:  # no draft, no counted forwards: not applicable rather than 0
            assert r["draft_acceptance"] is None and r["passes_per_token"] is None
    assert result.overall["good"]["draft_acceptance"].mean == pytest.approx(0.75)
    text = write_report(json.loads(json.dumps(result.to_dict())), tmp_path / "r.md").read_text()
    assert "draft kept" in text and "device passes / token" in text


def test_cloud_view_finds_facts_sent_as_token_ids():
    """The logit variant sends committed tokens as ids: leakage must decode them, not just grep bytes."""
    from fedcogen.client.cogen.wire_capture import WireCapture
    from fedcogen.models import load_tokenizer
    from fedcogen.protocols import cogen_pb2 as pb
    from fedcogen.simulations.evaluation.cogen_generator import cloud_view

    tok = load_tokenizer("tiny")
    cap = WireCapture()
    ids = tok("Meet me at the Blue Fern cafe", add_special_tokens=False)["input_ids"]
    cap.record("/Decode", "sent", pb.DecodeRequest(open=pb.SessionOpen(instruction="Invite Sam for lunch.")))
    cap.record("/Decode", "sent", pb.DecodeRequest(step=pb.TokenStep(token_ids=ids[:3])))
    cap.record("/Decode", "sent", pb.DecodeRequest(step=pb.TokenStep(token_ids=ids[3:])))
    cap.record("/Decode", "received", pb.DecodeReply(session_id="Blue Fern should not count: received"))
    facts = ["Blue Fern", "Sam"]
    assert m.leaked_facts([r.raw for r in cap.records if r.direction == "sent"], facts) == ["Sam"]
    assert m.leaked_facts(cloud_view(cap.records, tok), facts) == ["Blue Fern", "Sam"]
    assert m.leaked_facts(cloud_view([]), facts) == []


def test_style_markers_respect_where_they_belong():
    """Generated profiles say greetings belong in emails/messages: a post without one is not penalised."""
    profile = {"user_id": "u", "style": {"greeting": "Hey", "sign_off": "Cheers", "favourite_phrases": ["to be fair"],
                                         "greeting_in": ["email", "message"], "sign_off_in": ["email"]}}
    markers = m.StyleMarkers.from_profile(profile)
    assert markers.greeting_in == ("email", "message")
    post = m.style_match("To be fair, what a day.", markers, task_type="post")
    assert (post.greeting, post.sign_off, post.favourite_phrase, post.score) == (None, None, True, 1.0)
    email = m.style_match("To be fair, what a day.", markers, task_type="email")
    assert email.score == pytest.approx(1 / 3)
    assert m.style_match("Hey", markers).greeting is True  # unknown task type: every marker counts


def test_generated_federation_oracle_scores_perfectly(tmp_path):
    """On the project's own synthetic data, answering with the reference must score 1 on every
    quality metric (facts and style markers are really in the references, and the profile format
    is read correctly), while answering with the bare instruction recalls no private fact."""
    from fedcogen.cli.eval import load_profiles
    from fedcogen.dataset import (
        FederationConfig,
        generate_federation,
        validate_task_file,
        write_federation,
    )

    cfg = FederationConfig(n_users=6, history_per_user=2, train_tasks_per_user=1, val_tasks_per_user=1,
                           test_tasks_per_user=3, canaries_per_user=0)
    folder = write_federation(generate_federation(cfg), tmp_path / "fed")
    tasks = validate_task_file(folder / "test.jsonl")
    profiles, used = load_profiles(None, folder / "test.jsonl")
    assert used.endswith("profiles.jsonl") and len(profiles) == 6 and not any(p.empty for p in profiles.values())

    class Oracle:
        def generate(self, task, variant):  # noqa: ANN001, ANN202
            text = task.reference if variant == "oracle" else task.instruction
            return EvalAnswer(text=text, cloud_received=[task.instruction])

    res = evaluate(tasks, Oracle(), ["oracle", "instruction"], profiles=profiles,
                   config=EvalConfig(progress=False, resamples=200))
    o, i = res.overall["oracle"], res.overall["instruction"]
    assert o["rouge_l"].mean == 1.0 and o["fact_recall"].mean == 1.0 and o["style_match"].mean == 1.0
    assert o["style_match"].n == 6 and o["leaked_facts"].mean == 0.0  # instructions carry no private facts
    assert i["fact_recall"].mean == 0.0 and i["rouge_l"].mean < 0.5
    diff = next(p for p in res.paired if p.metric == "fact_recall")
    assert diff.distinguishable and diff.ci.low == 1.0
