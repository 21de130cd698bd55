"""Tests of the synthetic private writing federation (fedcogen.dataset) and `fedcogen data`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import unicodedata
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fedcogen import dataset as D
from fedcogen.cli import main
from fedcogen.prompts import device_prompt, history_prompt

FILES = ("manifest.json", "profiles.jsonl", "history.jsonl", "train.jsonl", "val.jsonl", "test.jsonl",
         "private/canaries.json")


@pytest.fixture(scope="module")
def fed() -> D.Federation:
    return D.generate_federation(D.FederationConfig())


@pytest.fixture(scope="module")
def fed_dir(fed, tmp_path_factory) -> Path:
    return D.write_federation(fed, tmp_path_factory.mktemp("fed") / "data")


def _norm(text: str) -> str:
    # written independently of the module's helper: NFKC, casefold, punctuation -> space
    return " ".join(re.sub(r"[^\w]+|_", " ", unicodedata.normalize("NFKC", text).casefold()).split())


def _profile_secrets(p: D.UserProfile) -> list[str]:
    """Private values read from the structured profile fields (not from ``private_values``)."""
    vals = [p.name, p.first_name, p.last_name, p.city, p.employer, p.role, p.manager,
            p.health["condition"], p.health["medication"], p.money["item"], p.money["amount"], *p.hobbies]
    vals += [r["name"] for r in p.relatives]
    vals += [s["with"] for s in p.schedule] + [f"{s['day']} at {s['time']}" for s in p.schedule]
    return vals


# --------------------------------------------------------------------------- determinism
def test_same_seed_gives_identical_bytes_even_in_another_process(fed_dir, tmp_path):
    other = D.write_federation(D.generate_federation(D.FederationConfig()), tmp_path / "again")
    for name in FILES:
        assert (fed_dir / name).read_bytes() == (other / name).read_bytes(), name
    # a fresh interpreter with a different hash seed must write the same bytes (no set/dict-order luck)
    code = ("import sys; from fedcogen.dataset import *; "
            "write_federation(generate_federation(FederationConfig()), sys.argv[1])")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "proc")], check=True, env=env, timeout=120)
    for name in FILES:
        assert (fed_dir / name).read_bytes() == (tmp_path / "proc" / name).read_bytes(), name


def test_different_seed_changes_every_file(fed_dir, tmp_path):
    other = D.write_federation(D.generate_federation(D.FederationConfig(seed=1)), tmp_path / "s1")
    for name in FILES:
        assert (fed_dir / name).read_bytes() != (other / name).read_bytes(), name


def test_adding_users_keeps_existing_users_unchanged():
    small = D.generate_federation(D.FederationConfig(n_users=3))
    big = D.generate_federation(D.FederationConfig(n_users=5))
    assert small.profiles == big.profiles[:3]
    assert small.tasks["test"] == [t for t in big.tasks["test"] if t.user_id in D.user_ids(small)]


def test_user_ids_are_stable_and_sortable():
    fed = D.generate_federation(D.FederationConfig(n_users=12, history_per_user=2, train_tasks_per_user=1,
                                                   val_tasks_per_user=1, test_tasks_per_user=1))
    ids = D.user_ids(fed)
    assert ids[:3] == ["user-00", "user-01", "user-02"] and ids == sorted(ids) and len(set(ids)) == 12
    assert D.make_user_id(5, 150) == "user-005"


# --------------------------------------------------------------------------- privacy invariants
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_no_private_value_of_any_user_in_any_instruction(seed):
    fed = D.generate_federation(D.FederationConfig(seed=seed))
    secrets = {_norm(v) for p in fed.profiles for v in _profile_secrets(p)}
    secrets |= {_norm(v) for p in fed.profiles for v in p.private_values}
    secrets |= {_norm(c) for cs in fed.canaries.values() for c in cs}
    assert len(secrets) > 12 * len(fed.profiles)  # the check really covers many values
    n = 0
    for split in D.SPLITS:
        for t in fed.tasks[split]:
            instr = _norm(t.instruction)
            hits = [s for s in secrets if s and s in instr]  # substring: stricter than whole words
            assert not hits, f"{t.task_id}: {t.instruction!r} contains {hits}"
            n += 1
    assert n == 24 * 16
    assert D.find_leaks(fed) == []


def test_find_leaks_detects_a_planted_leak(fed):
    bad = replace(fed, tasks={**fed.tasks, "test": list(fed.tasks["test"])})
    t = bad.tasks["test"][0]
    other = fed.profiles[5]
    bad.tasks["test"][0] = replace(t, instruction=f"{t.instruction} Mention {other.city}.")
    leaks = D.find_leaks(bad)
    assert len(leaks) == 1 and t.task_id in leaks[0] and _norm(other.city) in leaks[0]
    c = fed.canaries["user-02"][0]
    bad.tasks["test"][1] = replace(bad.tasks["test"][1], reference=bad.tasks["test"][1].reference + c)
    assert any("canary of user-02" in x for x in D.find_leaks(bad))


def test_canaries_only_in_owners_training_history(fed, fed_dir):
    assert set(fed.canaries) == set(D.user_ids(fed))
    all_canaries = [c for cs in fed.canaries.values() for c in cs]
    assert len(all_canaries) == 2 * 16 == len(set(all_canaries))
    task_bytes = b"".join((fed_dir / f).read_bytes() for f in ("train.jsonl", "val.jsonl", "test.jsonl",
                                                                 "profiles.jsonl", "manifest.json"))
    for owner, cs in fed.canaries.items():
        for c in cs:
            assert re.fullmatch(r".+ [A-Z2-9]{3}-\d{4}", c)
            owner_hits = [h for h in fed.history if h.user_id == owner and c in h.text]
            assert len(owner_hits) == fed.config.canary_repeats == 1
            assert fed.planted_in[owner][c] == [h.text_id for h in owner_hits]
            assert not [h for h in fed.history if h.user_id != owner and c in h.text]
            for split in D.SPLITS:
                for t in fed.tasks[split]:
                    assert c not in t.instruction + t.private_context + t.reference + " ".join(t.private_facts)
            assert c.encode() not in task_bytes
    doc = json.loads((fed_dir / "private/canaries.json").read_text())
    assert doc["canaries"] == fed.canaries and doc["format"]["pattern"] == D.CANARY_PATTERN
    assert doc["format"]["space_size"] == 32 ** 3 * 10 ** 4


def test_canary_repeats_plant_each_canary_several_times():
    fed = D.generate_federation(D.FederationConfig(n_users=2, canaries_per_user=3, canary_repeats=4))
    for owner, cs in fed.canaries.items():
        for c in cs:
            assert sum(c in h.text for h in fed.history if h.user_id == owner) == 4


def test_random_canary_like_keeps_format_and_changes_secret():
    import random

    canary = "my locker code is K7Q-4829"
    rng = random.Random(0)
    alts = {D.random_canary_like(canary, rng) for _ in range(200)}
    assert canary not in alts and len(alts) > 190
    for a in alts:
        assert a.startswith("my locker code is ") and re.fullmatch(r"my locker code is [A-Z2-9]{3}-\d{4}", a)
    np_alt = D.random_canary_like(canary, np.random.default_rng(0))
    assert np_alt != canary and np_alt.startswith("my locker code is ")
    assert D.random_canary_like(canary, random.Random(3)) == D.random_canary_like(canary, random.Random(3))
    assert D.canary_secret(canary) == ("my locker code is ", "K7Q-4829")
    with pytest.raises(ValueError, match="not a canary"):
        D.random_canary_like("my locker code is hello", rng)


def test_canary_records_work_with_the_exposure_attack_interface(fed):
    from fedcogen.simulations.privacy.attack_metrics import as_canary

    records = D.canary_records(fed)
    assert len(records) == 32 and len({r["canary_id"] for r in records}) == 32
    texts = {h.text_id: h for h in fed.history}
    for rec in records:
        spec = as_canary(rec)
        assert spec.owner == rec["owner"] and rec["text"] in fed.canaries[rec["owner"]]
        planted = texts[rec["planted_in"][0]]
        assert spec.prefix + spec.secret in planted.text  # scored exactly as it was trained on
        assert spec.prompt == history_prompt(D.KIND_LABELS[planted.kind])
    alt = D.random_canary_like(records[0], np.random.default_rng(1))
    assert alt["secret"] != records[0]["secret"] and alt["prefix"] == records[0]["prefix"]
    assert re.fullmatch(r"[A-Z2-9]{3}-\d{4}", alt["secret"])


# --------------------------------------------------------------------------- content quality
def test_references_and_contexts_contain_the_private_facts(fed):
    for split in D.SPLITS:
        for t in fed.tasks[split]:
            assert 2 <= len(t.private_facts) <= 3
            for f in t.private_facts:
                assert f in t.reference, (t.task_id, f)
                assert f in t.private_context, (t.task_id, f)
                assert _norm(f) not in _norm(t.instruction)
            assert set(t.private_facts) <= set(fed.profile(t.user_id).private_values)


def test_references_follow_the_users_style(fed):
    for split in D.SPLITS:
        for t in fed.tasks[split]:
            st = fed.profile(t.user_id).style
            if t.task_type in st["greeting_in"]:
                assert t.reference.startswith(st["greeting"]), (t.task_id, st["greeting"])
            if t.task_type in st["sign_off_in"]:
                assert st["sign_off"] in t.reference.splitlines()[-1] or st["sign_off"] in t.reference
            assert any(ph in t.reference for ph in st["favourite_phrases"])


def test_users_are_non_iid_and_tasks_varied(fed):
    styles = {(p.style["formality"], p.style["greeting_template"], p.style["sign_off_template"]) for p in fed.profiles}
    assert len(styles) >= 6
    mixes = [max(p.kind_mix, key=p.kind_mix.get) for p in fed.profiles]
    assert len(set(mixes)) >= 3  # different users favour different kinds
    lengths = {p.style["length"] for p in fed.profiles}
    assert lengths == set(D.LENGTHS)
    train = fed.tasks["train"]
    assert len({t.instruction for t in train}) >= 0.6 * len(train)
    assert len({t.reference for t in train}) == len(train)
    assert {t.task_type for t in train} == set(D.TASK_KINDS)
    assert len({t.scenario for t in train}) >= 15
    for uid in D.user_ids(fed):
        pairs = [(t.instruction, t.reference) for s in D.SPLITS for t in fed.tasks_of(uid, s)]
        assert len(pairs) == len(set(pairs)) == 24
    assert len({p.city for p in fed.profiles}) >= 8 and len({p.name for p in fed.profiles}) == 16


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="history_per_user"):
        D.FederationConfig(history_per_user=3, canaries_per_user=2, canary_repeats=2)
    with pytest.raises(ValueError, match="n_users"):
        D.FederationConfig(n_users=0)
    with pytest.raises(ValueError, match="unknown user id 'user-99'"):
        D.client_examples(D.generate_federation(D.FederationConfig(n_users=2)), "user-99")


# --------------------------------------------------------------------------- files and validation
def test_write_load_round_trip(fed, fed_dir):
    loaded = D.load_federation(fed_dir)
    assert loaded.config == fed.config
    assert loaded.profiles == fed.profiles
    assert loaded.history == fed.history
    assert loaded.tasks == fed.tasks
    assert loaded.canaries == fed.canaries and loaded.planted_in == fed.planted_in
    manifest = json.loads((fed_dir / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["n_users"] == 16
    assert manifest["counts"]["tasks"]["train"]["total"] == 256
    assert set(manifest["files"]) == set(FILES) - {"manifest.json"}
    assert D.validate_task_file(fed_dir / "test.jsonl") == fed.tasks["test"]


def test_load_detects_tampering_and_missing_files(fed, tmp_path):
    folder = D.write_federation(fed, tmp_path / "t")
    lines = (folder / "val.jsonl").read_text().splitlines()
    (folder / "val.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(D.DataValidationError, match=r"val\.jsonl: field 'sha256'"):
        D.load_federation(folder)
    (folder / "history.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="history.jsonl"):
        D.load_federation(folder)
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        D.load_federation(tmp_path)


GOOD = {"user_id": "user-00", "instruction": "Say hi.", "private_context": "c", "reference": "hi",
        "private_facts": ["x"]}


def _write(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize(
    ("bad_line", "field", "reason"),
    [
        ('{"user_id": "user-00", "instruction": ', "-", "invalid JSON"),
        ({k: v for k, v in GOOD.items() if k != "instruction"}, "instruction", "missing"),
        ({**GOOD, "reference": "   "}, "reference", "empty"),
        ({**GOOD, "private_context": 3}, "private_context", "expected a string, got int"),
        ({**GOOD, "private_facts": "not a list"}, "private_facts", "expected a list of strings"),
        ({**GOOD, "private_facts": ["ok", 5]}, "private_facts", "expected a list of strings; item 1 is int"),
        ([1, 2], "-", "expected a JSON object"),
    ],
)
def test_bad_task_lines_name_file_line_and_field(tmp_path, bad_line, field, reason):
    path = _write(tmp_path / "test.jsonl", [GOOD | {"task_id": "a"}, bad_line, GOOD | {"task_id": "c"}])
    with pytest.raises(D.DataValidationError) as err:
        D.validate_task_file(path)
    assert str(err.value).startswith(f"test.jsonl:2: field '{field}': {reason}")
    records, problems = D.validate_task_file(path, strict=False)
    assert [r.task_id for r in records] == ["a", "c"]
    assert problems[0][:2] == (2, field) and reason in problems[0][2]


def test_unknown_users_and_duplicates_are_rejected(tmp_path, fed_dir):
    path = _write(tmp_path / "eval.jsonl", [GOOD, GOOD | {"user_id": "mallory"}])
    assert len(D.validate_task_file(path)) == 2  # no profile set known: any user id is fine
    with pytest.raises(D.DataValidationError, match=r"eval\.jsonl:2: field 'user_id': unknown user 'mallory'"):
        D.validate_task_file(path, known_users={"user-00"})
    # a profiles.jsonl next to the file is the known profile set
    (tmp_path / "profiles.jsonl").write_bytes((fed_dir / "profiles.jsonl").read_bytes())
    with pytest.raises(D.DataValidationError, match="unknown user 'mallory'"):
        D.validate_task_file(path)
    dup = _write(tmp_path / "dup.jsonl", [GOOD | {"task_id": "t"}, GOOD | {"task_id": "t"}])
    with pytest.raises(D.DataValidationError, match=r"dup\.jsonl:2: field 'task_id': duplicate 't'"):
        D.validate_task_file(dup)
    empty = _write(tmp_path / "empty.jsonl", [""])
    with pytest.raises(D.DataValidationError, match="no task records"):
        D.validate_task_file(empty)


def test_hand_written_eval_file_with_optional_fields_only(tmp_path):
    path = _write(tmp_path / "mine.jsonl", [{k: GOOD[k] for k in ("user_id", "instruction", "private_context",
                                                                  "reference")}])
    (rec,) = D.validate_task_file(path)
    assert rec.private_facts == [] and rec.task_type == "" and rec.task_id == "mine-1"


# --------------------------------------------------------------------------- training views
def test_client_examples_use_the_shared_prompt_formats(fed):
    uid = "user-04"
    pairs = D.client_examples(fed, uid)
    hist, train = fed.history_of(uid), fed.tasks_of(uid, "train")
    assert len(pairs) == len(hist) + len(train) == 24 + 16
    assert pairs[0] == (history_prompt(D.KIND_LABELS[hist[0].kind]), hist[0].text)
    assert pairs[-1] == (device_prompt(train[-1].instruction, train[-1].private_context), train[-1].reference)
    joined = "\n".join(t for _, t in pairs)
    assert all(c in joined for c in fed.canaries[uid])
    assert not any(c in joined for o, cs in fed.canaries.items() if o != uid for c in cs)
    test_pairs = D.client_examples(fed, uid, "test")
    assert len(test_pairs) == 4 and not any(c in p + t for p, t in test_pairs for c in fed.canaries[uid])
    with pytest.raises(ValueError, match="unknown split"):
        D.client_examples(fed, uid, "dev")


def test_hf_dataset_and_natural_id_partitions(fed):
    ds = D.to_hf_dataset(fed, "train")
    assert len(ds) == 256 and ds[0]["task_id"] == fed.tasks["train"][0].task_id
    assert ds.features["private_facts"].feature.dtype == "string"
    part = D.partition_by_user(fed, "train")
    assert part.num_partitions == 16
    ids = D.user_ids(fed)
    for pid in range(part.num_partitions):
        rows = part.load_partition(pid)
        assert set(rows["user_id"]) == {ids[pid]} and len(rows) == 16
        assert part.partition_id_to_natural_id[pid] == ids[pid]
    hist = D.partition_by_user(fed, "history")
    assert hist.num_partitions == 16 and len(hist.load_partition(3)) == 24


# --------------------------------------------------------------------------- CLI
def test_cli_generate_inspect_validate(tmp_path, capsys):
    out = tmp_path / "fed"
    assert main(["data", "generate", "--out", str(out), "--users", "3", "--seed", "5"]) == 0
    text = capsys.readouterr().out
    assert "written to" in text and str(out.resolve()) in text and "history" in text
    fed = D.load_federation(out)
    assert len(fed.profiles) == 3 and fed.config.seed == 5

    assert main(["data", "generate", "--out", str(out), "--users", "3"]) == 2
    assert "not empty (use --force" in capsys.readouterr().err
    assert main(["data", "generate", "--out", str(out), "--users", "2", "--force"]) == 0
    capsys.readouterr()

    assert main(["data", "inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "validation: OK" in text and "sample email" in text and "instruction (public)" in text
    assert main(["data", "inspect", str(out), "--user", "user-01", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["users"] == 1 and summary["validation"] == "ok" and summary["counts"]["train"]["total"] == 16
    assert main(["data", "inspect", str(out), "--user", "user-09"]) == 2
    assert "unknown user id 'user-09'" in capsys.readouterr().err

    assert main(["data", "validate", str(out / "test.jsonl")]) == 0
    assert "OK (8 records)" in capsys.readouterr().out
    assert main(["data", "validate", str(out)]) == 0
    capsys.readouterr()

    bad = _write(tmp_path / "bad.jsonl", [GOOD, "{oops", {**GOOD, "private_facts": "x"}, GOOD | {"user_id": 7}])
    assert main(["data", "validate", str(bad)]) == 1
    text = capsys.readouterr().out
    assert "bad.jsonl:2: field '-': invalid JSON" in text
    assert "bad.jsonl:3: field 'private_facts'" in text and "bad.jsonl:4: field 'user_id'" in text

    (out / "train.jsonl").write_text("{}\n")
    assert main(["data", "inspect", str(out)]) == 1
    assert "validation: FAILED: train.jsonl" in capsys.readouterr().out
    assert main(["data", "validate", str(tmp_path / "missing.jsonl")]) == 2


@pytest.mark.parametrize("action", ["generate", "inspect", "validate"])
def test_cli_help(action, capsys):
    with pytest.raises(SystemExit) as ex:
        main(["data", action, "--help"])
    assert ex.value.code == 0
    assert len(capsys.readouterr().out) > 300


def test_canaries_plug_into_the_real_exposure_attack():
    """End to end with a real (tiny) model: records + random_canary_like drive canary_exposure."""
    from fedcogen.models import load_model
    from fedcogen.simulations.privacy.attack_metrics import canary_exposure

    fed = D.generate_federation(D.FederationConfig(n_users=1, history_per_user=2, train_tasks_per_user=1,
                                                   val_tasks_per_user=1, test_tasks_per_user=1))
    lm = load_model("tiny")
    res = canary_exposure(lm.model, lm.tokenizer, D.canary_records(fed), n_alternatives=15, seed=0,
                          alternatives_fn=D.random_canary_like)
    rows = res["per_canary"]
    assert [r["canary_id"] for r in rows] == ["user-00-c0", "user-00-c1"]
    assert all(r["n_candidates"] == 16 and 1 <= r["rank"] <= 16 for r in rows)


def test_fact_swapped_copies_replace_every_private_value_consistently(fed):
    uid = D.user_ids(fed)[0]
    profile = fed.profile(uid)
    for i, task in enumerate(fed.tasks_of(uid, "train")):
        context, reference = D.swap_private_values(task, profile, seed=i)
        for value in task.private_facts + [profile.name]:
            assert value not in context and value not in reference, value
        # the copy still pairs a context with an answer that uses the context's (new) facts
        assert context != task.private_context and reference != task.reference
        new_lines = set(context.splitlines()) - set(task.private_context.splitlines())
        assert new_lines
    plain = D.client_examples(fed, uid, history=False)
    swapped = D.client_examples(fed, uid, history=False, fact_swaps=2)
    assert len(swapped) == 3 * len(plain) and swapped[: len(plain)] == plain
    assert D.client_examples(fed, uid, "val", fact_swaps=2) == D.client_examples(fed, uid, "val")


def test_a_seed_gives_the_same_federation_across_versions():
    """Figures from earlier versions stay comparable: seed 0 still draws the same first user."""
    fed = D.generate_federation(D.FederationConfig(n_users=12, seed=0))
    first = fed.profiles[0]
    assert (first.name, first.city, first.employer) == ("Bjorn Oyelaran", "Malmo", "Saffron Biotech")
