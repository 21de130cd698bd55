"""Foreign-format evaluation sets (issue 26 item 3), the foreign-facts count and per-set reporting."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fedcogen import dataset as D
from fedcogen.cli import eval as eval_cli
from fedcogen.cli import main
from fedcogen.dataset import pools, rich_pools
from fedcogen.simulations.evaluation import foreign_sets_gen as gen
from fedcogen.simulations.evaluation import metrics as m
from fedcogen.simulations.evaluation.compare_runs import compare_runs
from fedcogen.simulations.evaluation.evaluate import EvalAnswer, EvalConfig, evaluate, group_summaries

SETS = Path(gen.__file__).resolve().parent / "foreign_sets"
NAMES = ("cogenesis", "threads")


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (SETS / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]


def test_committed_files_are_what_the_procedure_writes(tmp_path):
    counts = gen.build(tmp_path)
    assert set(counts) == set(NAMES)
    for name in NAMES:
        assert (tmp_path / f"{name}.jsonl").read_bytes() == (SETS / f"{name}.jsonl").read_bytes(), name


@pytest.mark.parametrize("name", NAMES)
def test_sets_load_as_eval_task_files_with_facts_in_reference_and_context(name):
    records, problems = D.validate_task_file(SETS / f"{name}.jsonl", strict=False)
    assert problems == [] and len(records) >= 24
    assert len({r.user_id for r in records}) >= 12
    for r in records:
        assert r.private_facts
        for f in r.private_facts:
            assert f.casefold() in r.reference.casefold() and f.casefold() in r.private_context.casefold()
            assert f.casefold() not in r.instruction.casefold(), (r.task_id, f)


def test_cogenesis_set_has_the_cogenesis_layout():
    for r in _rows("cogenesis"):
        labels = re.findall(r"^([A-Z][a-z ]+):", r["private_context"], flags=re.M)
        assert labels[:6] == ["Name", "Location", "Occupation", "Traits", "Writing style", "Private details"]
        assert "\n\nWriting history:\n" in r["private_context"]
        assert len(r["instruction"].split()) <= 10 and not r["instruction"].endswith(".")  # a task title
    words = [len(r["private_context"].split()) for r in _rows("cogenesis")]
    assert max(words) > 800


def test_vocabulary_is_not_the_generators():
    """The sets must test users the generator did not write: no shared name, place or occupation."""
    ours = {*gen.FIRST, *gen.LAST, *gen.PLACES, *gen.OCCUPATIONS, *gen.SPOTS}
    theirs = {*D.names_and_places(), *pools.ROLES, *pools.HOBBIES, *pools.GIVEN_NAMES, *pools.SURNAMES,
              *pools.CITIES, *rich_pools.VENUES, *rich_pools.STREETS, *rich_pools.PET_NAMES}
    assert not {w.casefold() for w in ours} & {w.casefold() for w in theirs}
    source = Path(gen.__file__).read_text(encoding="utf-8")
    assert not re.search(r"^\s*(from|import)\s+fedcogen", source, flags=re.M)  # nothing of the project


# --------------------------------------------------------------------------- foreign facts
def test_foreign_facts_counts_names_and_places_the_context_lacks():
    pattern = m.foreign_pattern(["Lisbon", "Tampere", "Eleanor Stone", "Cork"])
    own = "Name: Jasper\nLocation: Tampere"
    answer = "A weekend in Tampere and Lisbon with Eleanor Stone, then Lisbon again; a cork board."
    assert m.foreign_facts(answer, pattern, own) == ["Lisbon", "Eleanor Stone"]  # distinct, own place allowed
    assert m.foreign_facts("nothing here", pattern, own) == []
    assert m.foreign_facts(answer, None, own) is None
    assert m.foreign_pattern([]) is None


class NameDropper:
    """device: the reference (reads the context); device_personalised: the reference + a generator city."""

    def generate(self, task, variant):  # noqa: ANN001, ANN201
        text = task.reference + (" See you in Lisbon with Oskar." if variant == "device_personalised" else "")
        return EvalAnswer(text=text, tokens=5)


def test_evaluate_counts_foreign_facts_per_answer_and_summarises_each_set():
    tasks = [t for name in NAMES for t in D.validate_task_file(SETS / f"{name}.jsonl", strict=True)[:6]]
    variants = ["device", "device_personalised"]
    cfg = EvalConfig(resamples=50, progress=False)
    result = evaluate(tasks, NameDropper(), variants, config=cfg, foreign_terms=D.names_and_places()).to_dict()
    rows = {(r["task_id"], r["variant"]): r for r in result["rows"]}
    t0 = tasks[0].task_id
    assert rows[(t0, "device")]["foreign_facts"] == 0
    assert rows[(t0, "device_personalised")]["foreign"] == ["Lisbon", "Oskar"]
    prefix = {"cogenesis": "cg-", "threads": "th-"}
    groups = {n: {t.user_id for t in tasks if t.user_id.startswith(prefix[n])} for n in NAMES}
    assert all(groups.values())
    sets = group_summaries(result, groups, variants, cfg)
    for name in NAMES:
        assert sets[name]["users"] == sorted(groups[name])
        assert sets[name]["overall"]["device_personalised"]["foreign_facts"]["mean"] == pytest.approx(2.0)
        assert sets[name]["counts"]["device"]["scored"] == 6
        diff = next(p for p in sets[name]["paired"] if p["metric"] == "foreign_facts")
        assert diff["n"] == len(groups[name])


def test_other_users_facts_in_the_same_set_count_as_foreign():
    a, b = (D.TaskRecord(user_id=u, instruction="Write a note.", private_context=f"I live in {c}.",
                         reference=f"Hello from {c}.", private_facts=[c]) for u, c in (("u1", "Whitby"), ("u2", "Kendal")))

    class Swapper:
        def generate(self, task, variant):  # noqa: ANN001, ANN201
            return EvalAnswer(text="Hello from Kendal." if task.user_id == "u1" else task.reference)

    res = evaluate([a, b], Swapper(), ["device"], config=EvalConfig(resamples=10, progress=False)).to_dict()
    assert [r["foreign"] for r in res["rows"]] == [["Kendal"], []]


# --------------------------------------------------------------------------- CLI
class Factory:
    def __call__(self, args, address, variants):  # noqa: ANN001, ANN204
        return NameDropper()


def test_eval_cli_reports_each_set_and_the_foreign_count(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(eval_cli, "build_generator", Factory())
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    out, report = tmp_path / "res.json", tmp_path / "res.md"
    rc = main(["eval", *[a for n in NAMES for a in ("--dataset", str(SETS / f"{n}.jsonl"))],
               "--variants", "device,device_personalised", "--adapter", str(adapter), "--max-tasks-per-user", "1",
               "--resamples", "50", "--json", str(out), "--report", str(report), "--no-progress"])
    assert rc == 0
    data = json.loads(out.read_text())
    assert set(data["sets"]) == set(NAMES)
    for name in NAMES:
        s = data["sets"][name]
        assert len(s["users"]) == 12 and s["tasks"] == 12 and s["dataset"].endswith(f"{name}.jsonl")
        assert s["overall"]["device"]["foreign_facts"]["mean"] == 0
        assert s["overall"]["device_personalised"]["foreign_facts"]["mean"] == pytest.approx(2.0)
    assert {r["set"] for r in data["rows"]} == set(NAMES)
    text = report.read_text()
    assert "## Per task set" in text and "### cogenesis (12 users, 12 tasks" in text and "foreign facts" in text
    assert "== threads (12 users)" in capsys.readouterr().out


def test_eval_cli_refuses_a_user_in_two_sets(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(eval_cli, "build_generator", Factory())
    copy = tmp_path / "again.jsonl"
    copy.write_text((SETS / "threads.jsonl").read_text())
    rc = main(["eval", "--dataset", str(SETS / "threads.jsonl"), "--dataset", str(copy), "--variants", "device",
               "--json", str(tmp_path / "r.json"), "--no-progress"])
    assert rc != 0 and "user id th-00 is in" in capsys.readouterr().err


def test_cap_tasks_keeps_the_first_k_of_each_user():
    tasks = D.validate_task_file(SETS / "cogenesis.jsonl", strict=True)
    one = eval_cli.cap_tasks(tasks, None, 1)
    assert len(one) == 12 and len({t.user_id for t in one}) == 12
    assert eval_cli.cap_tasks(tasks, 5, 1) == one[:5]
    assert eval_cli.set_names([Path("a/x.jsonl"), Path("b/x.jsonl")]) == ["a/x", "b/x"]


def test_compare_runs_pairs_two_result_files_per_set():
    tasks = [t for name in NAMES for t in D.validate_task_file(SETS / f"{name}.jsonl", strict=True)[:4]]
    cfg = EvalConfig(resamples=50, progress=False)
    groups = {"cogenesis": {t.user_id for t in tasks if t.user_id.startswith("cg-")},
              "threads": {t.user_id for t in tasks if t.user_id.startswith("th-")}}
    runs = {}
    for variant in ("device", "device_personalised"):
        r = evaluate(tasks, NameDropper(), [variant], config=cfg, foreign_terms=D.names_and_places()).to_dict()
        r["sets"] = group_summaries(r, groups, [variant], cfg)
        runs[variant] = r
    out = compare_runs(runs["device_personalised"], "device_personalised", runs["device"], "device", cfg=cfg)
    assert set(out) == set(NAMES)
    for name in NAMES:
        assert out[name]["users"] == len(groups[name]) and out[name]["missing_users"] == 0
        assert out[name]["paired"]["foreign_facts"]["mean"] == pytest.approx(2.0)
        assert out[name]["paired"]["foreign_facts"]["n"] == len(groups[name])
        assert out[name]["b"]["rouge_l"]["mean"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="variant 'cloud'"):
        compare_runs(runs["device"], "cloud", runs["device"], "device")
