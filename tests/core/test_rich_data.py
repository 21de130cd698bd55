"""The rich federation (issue 26): determinism, invariants, formats, absent facts, and the variety metric."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace

import pytest

from fedcogen import dataset as D
from fedcogen.cli import main
from fedcogen.dataset.variety import distinct_n, skeleton, template_reuse, variety_report

DATA_FILES = ("profiles.jsonl", "history.jsonl", "train.jsonl", "val.jsonl", "test.jsonl", "private/canaries.json")


@pytest.fixture(scope="module")
def rich() -> D.Federation:
    return D.generate_federation(D.FederationConfig(n_users=8, variety="rich"))


def _all_tasks(fed: D.Federation) -> list[D.TaskRecord]:
    return [t for s in D.SPLITS for t in fed.tasks[s]]


def test_rich_federation_is_byte_identical_for_a_seed_and_differs_for_another(tmp_path):
    cfg = D.FederationConfig(n_users=4, variety="rich")
    a = D.write_federation(D.generate_federation(cfg), tmp_path / "a")
    b = D.write_federation(D.generate_federation(cfg), tmp_path / "b")
    c = D.write_federation(D.generate_federation(replace(cfg, seed=1)), tmp_path / "c")
    for name in DATA_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "train.jsonl").read_bytes() != (c / "train.jsonl").read_bytes()


def test_basic_federation_files_are_unchanged_by_the_rich_writer(tmp_path):
    """Every earlier figure was measured on the basic generator's bytes, so the default must still write
    them: sha256 of a 3-user basic federation, measured with main at 7608721 (before issue 26)."""
    folder = D.write_federation(D.generate_federation(D.FederationConfig(n_users=3)), tmp_path / "basic")
    got = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in BASIC_SHA256}
    assert got == BASIC_SHA256, "the basic generator's output changed"


BASIC_SHA256: dict[str, str] = {
    "profiles.jsonl": "94f382ff56e819c379df971b5497876a7d5cac5ab6bd85b1b1b5590ae276eb3c",
    "history.jsonl": "7b92689c2a33ba83bc5d2c91850745603ba8231f53d5813ce44c31bcc0678f0b",
    "train.jsonl": "f821dc6ffe55555871d2ad28a703340540d9d372dd7b4901e2f22798d79a4f1c",
    "val.jsonl": "2d0e86bb98e8bd14a5dcaa71ed20aebafd851f0a8056f34e73881b4442c3fb85",
    "test.jsonl": "a579096db8a72b57c6452d75f821d0f42c83c98d3f2de0e5205fc9905314aacb",
    "private/canaries.json": "771f57e9bcdef72bdc4c8a2aca15eec6e86fe8c39be380c05c8e848d0e04492a",
}


def test_no_private_value_in_instructions_and_facts_in_reference_and_context(rich):
    assert D.find_leaks(rich) == []
    kinds = {t.task_type for t in _all_tasks(rich)}
    assert len(kinds) >= 12, kinds
    for t in _all_tasks(rich):
        for f in t.private_facts:
            assert f in t.reference and f in t.private_context, (t.task_id, f)


def test_reference_never_uses_a_private_value_its_context_lacks(rich):
    """Nothing invented: every private value of the user in a reference is also in its context (the user's
    own name, written in the sign-off, is in every context)."""
    for t in _all_tasks(rich):
        for v in rich.profile(t.user_id).private_values:
            if re.search(rf"(?<!\w){re.escape(v)}(?!\w)", t.reference):
                assert v in t.private_context, (t.task_id, v)


def test_absent_fact_tasks_answer_without_the_value():
    fed = D.generate_federation(D.FederationConfig(n_users=4, variety="rich", absent_fact_percent=100))
    absent = [t for t in _all_tasks(fed) if "/absent-" in t.scenario]
    assert len(absent) >= len(_all_tasks(fed)) // 2
    for t in absent:
        p = fed.profile(t.user_id)
        slot = t.scenario.split("/absent-")[1]
        value = {"rel_name": None, "city": p.city, "employer": p.employer, "manager": p.manager,
                 **{k: p.extra[k] for k in ("venue", "event_date", "pet_name", "street")}}[slot]
        if value is not None:
            assert value not in t.reference and value not in t.private_context, (t.task_id, slot)
        assert value not in t.private_facts
    none = D.generate_federation(D.FederationConfig(n_users=4, variety="rich", absent_fact_percent=0))
    assert not any("/absent-" in t.scenario for t in _all_tasks(none))


def test_switches_change_what_the_contexts_hold():
    base = D.FederationConfig(n_users=6, variety="rich")
    varied = D.generate_federation(base)
    plain = D.generate_federation(replace(base, format_variety=False))
    assert variety_report(varied)["context_layouts"] >= 6
    first = {t.private_context.splitlines()[0].split(":")[0] for t in _all_tasks(plain)}
    assert first <= {"name", "me", "full name", "who I am"}, first
    assert any(t.private_context.lstrip().startswith("{") for t in _all_tasks(varied))  # JSON profiles

    def values_in_context(fed: D.Federation) -> float:
        tasks = _all_tasks(fed)
        return sum(sum(v in t.private_context for v in fed.profile(t.user_id).private_values)
                   for t in tasks) / len(tasks)

    lean = D.generate_federation(replace(base, distractor_facts=0, max_context_words=60))
    rich_ctx = D.generate_federation(replace(base, max_context_words=60))
    assert values_in_context(rich_ctx) > values_in_context(lean) + 1


def test_context_lengths_reach_long_and_respect_the_cap(rich):
    words = [len(t.private_context.split()) for t in _all_tasks(rich)]
    assert max(words) <= rich.config.max_context_words
    assert max(words) > 600 and min(words) < 80
    short = D.generate_federation(D.FederationConfig(n_users=3, variety="rich", max_context_words=150))
    assert max(len(t.private_context.split()) for t in _all_tasks(short)) <= 150


def test_rich_folder_round_trips_and_profiles_keep_their_extra_facts(rich, tmp_path):
    folder = D.write_federation(rich, tmp_path / "rich")
    loaded = D.load_federation(folder)
    assert loaded.profiles[0].extra == rich.profiles[0].extra and loaded.profiles[0].extra["pet_name"]
    assert loaded.tasks["test"] == rich.tasks["test"]
    assert loaded.config.variety == "rich"


def test_fact_swaps_replace_the_rich_facts_too(rich):
    t = next(t for t in rich.tasks["train"] if any(v in t.reference for v in rich.profile(t.user_id).extra.values()))
    p = rich.profile(t.user_id)
    extras = [v for k, v in p.extra.items() if k in ("birthday", "habit", "pet_name", "street", "venue", "event_date")
              and v in t.reference]
    context, reference = D.swap_private_values(t, p, 7)
    for v in extras:
        assert v not in reference and v not in context, v


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="variety"):
        D.FederationConfig(variety="fancy")
    with pytest.raises(ValueError, match="absent_fact_percent"):
        D.FederationConfig(absent_fact_percent=101)
    with pytest.raises(ValueError, match="format_variety"):
        D.FederationConfig(format_variety=1)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- variety metric
def test_distinct_n_by_hand():
    assert distinct_n(["a b a b"], 1) == pytest.approx(2 / 4)
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)  # ab, ba, ab
    assert distinct_n(["a b", "a b"], 2) == pytest.approx(1 / 2)  # n-grams never cross texts
    assert distinct_n(["a"], 2) is None


def test_template_reuse_masks_each_users_values():
    assert skeleton("Hi Anna, see you in Lisbon.", ["Anna", "Lisbon"]) == "hi <v>, see you in <v>."
    texts = {"u1": ["Hi Anna. Bye now."], "u2": ["Hi Bo. Something else."]}
    values = {"u1": ["Anna"], "u2": ["Bo"]}
    r = template_reuse(texts, values)
    # "hi <v>." is shared by both users; the other two sentences are not
    assert r["sentences"] == 4 and r["sentence_skeletons_shared_across_users"] == pytest.approx(2 / 4)
    assert r["distinct_sentence_skeletons"] == 3 and r["text_skeletons_shared_across_users"] == 0


def test_rich_is_more_varied_than_basic_at_the_same_size():
    basic = variety_report(D.generate_federation(D.FederationConfig(n_users=8)))
    rich = variety_report(D.generate_federation(D.FederationConfig(n_users=8, variety="rich")))
    assert basic["tasks"] == rich["tasks"]
    assert rich["task_kinds"] > 3 * basic["task_kinds"] and rich["context_layouts"] > basic["context_layouts"]
    assert rich["distinct_n"]["references"]["distinct_3"] > basic["distinct_n"]["references"]["distinct_3"]
    assert (rich["template_reuse"]["sentence_skeletons_shared_across_users"]
            < basic["template_reuse"]["sentence_skeletons_shared_across_users"])


def test_data_variety_cli_writes_figures_with_provenance(tmp_path, capsys):
    out = tmp_path / "v.json"
    assert main(["data", "variety", "--users", "3", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert set(doc["reports"]) == {"basic", "rich"} and "commit" in json.dumps(doc["provenance"])
    assert "sentence skeletons shared across users" in capsys.readouterr().out
    assert main(["data", "variety", "--varieties", "nope"]) != 0
    assert "--varieties: unknown nope" in capsys.readouterr().err


def test_data_generate_cli_writes_a_rich_federation(tmp_path):
    assert main(["data", "generate", "--out", str(tmp_path / "r"), "--users", "2", "--variety", "rich",
                 "--max-context-words", "200"]) == 0
    fed = D.load_federation(tmp_path / "r")
    assert fed.config.variety == "rich" and fed.config.max_context_words == 200


def test_data_inspect_counts_the_rich_kinds(rich, tmp_path, capsys):
    folder = D.write_federation(rich, tmp_path / "rich")
    assert main(["data", "inspect", str(folder), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    train = summary["counts"]["train"]
    assert train["total"] == len(rich.tasks["train"])
    assert sum(v for k, v in train.items() if k != "total") == train["total"]  # every kind has a column
    assert "cover_letter" in summary["samples"] or "speech" in summary["samples"]
