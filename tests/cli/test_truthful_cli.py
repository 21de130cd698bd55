"""Issue 24 (truthful runs), the CLI part: a command's exit status and labels tell what really happened.

* a cloud variant whose cloud is unreachable is a failure (exit 1, the cause last), never printed or
  scored under the variant's name; ``--allow-fallback`` keeps such answers, labelled and counted apart;
* input limits: oversized fields and non-UTF-8 lines are line-numbered problems of their line;
* results are strict JSON (``null``, never ``NaN``);
* every help page renders, shows each default once, lists the demo's device model; ``-v`` works after
  the subcommand; TLS errors name ``fedcogen certs``; the quick demo's report does not judge it by the
  full demo's targets.

The CLI runs are in-process with ``tiny`` models and a loopback port with nothing listening (a few
seconds each).
"""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import numpy as np
import pytest

from fedcogen import results_json
from fedcogen.cli import build_parser, main
from fedcogen.cli.common import DEVICE_MODEL, all_parsers
from fedcogen.cli.generate import load_tasks
from fedcogen.dataset import validate_task_file
from fedcogen.dataset.validate import FieldLimits
from fedcogen.protocols.security.tls import channel_credentials, server_credentials
from fedcogen.server.fl import fl_outputs
from fedcogen.simulations.demo import demo_report
from fedcogen.simulations.demo.demo import DEMO_RUN, failure_summary
from fedcogen.simulations.evaluation.evaluate import EvalAnswer, EvalConfig, evaluate

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TASKS = FIXTURES / "eval_tasks.jsonl"


def dead_address() -> str:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def strict_loads(text: str):  # noqa: ANN201
    def refuse(name: str):  # noqa: ANN202
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


# ------------------------------------------------------------------ item 2: unreachable cloud


def test_generate_with_dead_cloud_exits_1_and_prints_no_cloud_answer(tmp_path, capsys):
    out = tmp_path / "gen.json"
    rc = main(["generate", "--variant", "cloud", "--cloud", dead_address(), "--insecure", "--data", str(TASKS),
               "--user", "u1", "--device-model", "tiny", "--max-new-tokens", "4", "--out", str(out)])
    got = capsys.readouterr()
    assert rc == 1
    assert "[cloud]" not in got.out  # the device's text is not presented as the cloud's
    last = got.err.strip().splitlines()[-3:]
    assert "fell back to the device alone" in last[0] and "cause: cloud unavailable" in last[1]
    rows = json.loads(out.read_text())["results"]
    assert len(rows) == 1 and rows[0]["fell_back"] is True  # stopped at the first fallback


def test_generate_allow_fallback_labels_each_answer(capsys):
    rc = main(["generate", "--variant", "logit", "--cloud", dead_address(), "--insecure", "--data", str(TASKS),
               "--user", "u1", "--device-model", "tiny", "--max-new-tokens", "4", "--allow-fallback"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.count("[logit FELL BACK: device alone]") == 2 and "[logit]" not in out


def test_eval_with_dead_cloud_exits_1_and_scores_nothing_as_a_cloud_variant(tmp_path, capsys):
    out = tmp_path / "eval.json"
    args = ["eval", "--dataset", str(TASKS), "--variants", "device,cloud,logit", "--cloud", dead_address(),
            "--insecure", "--device-model", "tiny", "--max-tasks", "2", "--max-new-tokens", "4", "--resamples", "20",
            "--no-progress", "--json", str(out)]
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 1
    assert "fell back to the device alone (cloud, logit)" in err.strip().splitlines()[-2]
    data = strict_loads(out.read_text())  # strict JSON (item 7): null where no mean exists
    for v in ("cloud", "logit"):
        assert data["counts"][v] == {"tasks": 2, "scored": 0, "fell_back": 2, "failed": 0}
        assert data["overall"][v]["rouge_l"]["n"] == 0 and data["overall"][v]["rouge_l"]["mean"] is None
    assert data["counts"]["device"]["scored"] == 2 and data["overall"]["device"]["rouge_l"]["n"] == 1
    assert all(r["fell_back"] and "error" in r for r in data["rows"] if r["variant"] != "device")

    # --allow-fallback: exit 0, the answers are kept and marked, still not the variant's means
    assert main([*args, "--allow-fallback"]) == 0
    data = strict_loads(out.read_text())
    assert data["counts"]["cloud"]["fell_back"] == 2 and data["overall"]["cloud"]["rouge_l"]["n"] == 0
    kept = [r for r in data["rows"] if r["variant"] == "cloud"]
    assert all(r["fell_back"] and "error" not in r and "rouge_l" in r for r in kept)


class HalfFallingBack:
    """device answers; 'logit' falls back on task B only (the cloud died mid-run)."""

    def generate(self, task, variant):  # noqa: ANN001, ANN201
        fell = variant == "logit" and task.task_id == "B"
        return EvalAnswer(text=task.reference if variant == "device" else "something else", tokens=3,
                          fell_back=fell, warnings=["cloud unavailable (refused)"] if fell else [])


def test_demo_scoring_keeps_fallbacks_out_of_the_means_and_in_the_table():
    tasks = validate_task_file(TASKS)
    result = evaluate(tasks, HalfFallingBack(), ["device", "logit"], config=EvalConfig(progress=False, resamples=20))
    rows = {(r["task_id"], r["variant"]): r for r in result.rows}
    assert rows["B", "logit"]["fell_back"] and "rouge_l" not in rows["B", "logit"]
    assert result.per_user["logit"]["u1"]["n_tasks"] == 1  # only task A ran as logit
    assert result.counts["logit"] == {"tasks": 3, "scored": 2, "fell_back": 1, "failed": 0}
    assert any("1 of 3 answers fell back" in n for n in result.notes)
    overall = result.to_dict()["overall"]
    table = "\n".join(demo_report.variant_table(overall, result.counts))
    assert "| 2/3 (1 FELL BACK) |" in table and "| 3/3 |" in table
    assert failure_summary(result.counts) == ["logit: 1 of 3 answers fell back to the device alone, 0 failed; "
                                              "left out of logit's means"]


# ------------------------------------------------------------------ item 7: input size, encoding, JSON


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_oversized_field_is_a_problem_of_its_line_naming_file_line_and_field(tmp_path, capsys):
    rows = [json.loads(line) for line in TASKS.read_text().splitlines()]
    rows[1]["private_context"] = "x" * (FieldLimits().private_context + 1)
    data = write_lines(tmp_path / "big.jsonl", [json.dumps(r).encode() for r in rows])
    records, problems = validate_task_file(data, strict=False)
    assert [r.task_id for r in records] == ["A", "C"]
    assert problems == [(2, "private_context", "200,001 characters, over the limit of 200,000 "
                                                "(raise it with --max-chars private_context=N)")]
    assert len(validate_task_file(data, limits=FieldLimits.from_specs(["private_context=300000"]))) == 3
    rc = main(["eval", "--dataset", str(data), "--variants", "device", "--on-invalid", "reject",
               "--device-model", "tiny", "--json", str(tmp_path / "e.json")])
    assert rc == 2 and "big.jsonl:2: field 'private_context': 200,001 characters" in capsys.readouterr().err
    with pytest.raises(ValueError, match="FIELD=CHARS"):
        FieldLimits.from_specs(["context=5"])


def test_non_utf8_line_is_skipped_with_its_number_and_results_are_strict_json(tmp_path, capsys):
    lines = TASKS.read_bytes().splitlines()
    data = write_lines(tmp_path / "mixed.jsonl", [lines[0], b'{"task_id": "Z", "instruction": "caf\xe9"}',
                                                  *lines[1:]])
    records, problems = validate_task_file(data, strict=False)
    assert [r.task_id for r in records] == ["A", "B", "C"]
    assert problems[0][0] == 2 and "not UTF-8" in problems[0][2]
    out = tmp_path / "eval.json"
    rc = main(["eval", "--dataset", str(data), "--variants", "device", "--on-invalid", "skip", "--device-model",
               "tiny", "--max-new-tokens", "3", "--resamples", "20", "--no-progress", "--json", str(out)])
    assert rc == 0
    assert "skipping invalid line: mixed.jsonl:2: not UTF-8 text" in capsys.readouterr().err
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = strict_loads(text)
    assert data["meta"]["invalid_lines"] == 1
    assert data["overall"]["device"]["style_match"]["mean"] is None  # no profiles: not measured -> null


def test_results_json_writes_null_for_non_finite_numbers(tmp_path):
    obj = {"a": math.nan, "b": [1.5, math.inf, (-math.inf,)], "c": np.float32("nan"), "d": np.array([1.0, np.nan]),
           "e": Path("x")}
    path = results_json.write(tmp_path / "r.json", obj, default=str)
    assert strict_loads(path.read_text()) == {"a": None, "b": [1.5, None, [None]], "c": None, "d": [1.0, None],
                                             "e": "x"}


# ------------------------------------------------------------------ items 8, 9: help, -v, TLS, quick demo


def test_every_help_page_renders_and_shows_each_default_once():
    parser = build_parser()
    for p in all_parsers(parser):
        text = p.format_help()  # `fedcogen bench --help` raised ValueError on a bare % before
        assert "(default: None)" not in text, p.prog
        formatter = p._get_formatter()
        for action in p._actions:
            if action.help:
                shown = formatter._expand_help(action)
                assert shown.count("(default") <= 1, (p.prog, action.option_strings, shown)
    simulate = next(p for p in all_parsers(parser) if p.prog.endswith(" simulate"))
    assert "smollm2-27l" in simulate.format_help()


def test_device_model_defaults_to_the_demos():
    assert DEVICE_MODEL == DEMO_RUN.model == "smollm2-27l"
    parser = build_parser()
    assert parser.parse_args(["eval", "--dataset", "d", "--json", "o"]).device_model == DEVICE_MODEL
    assert parser.parse_args(["generate", "--data", "d", "--user", "u"]).device_model == DEVICE_MODEL
    assert parser.parse_args(["gate", "calibrate"]).device_model == DEVICE_MODEL


@pytest.mark.parametrize("argv, verbose", [
    (["simulate", "-v"], True), (["-v", "simulate"], True), (["simulate"], False),
    (["cloud", "serve", "--verbose"], True), (["bench", "comm", "-v"], True),
])
def test_verbose_is_accepted_after_the_subcommand(argv, verbose):
    assert build_parser().parse_args(argv).verbose is verbose


def test_tls_errors_name_fedcogen_certs(tmp_path):
    with pytest.raises(FileNotFoundError, match="fedcogen certs --out DIR"):
        channel_credentials(tmp_path)
    with pytest.raises(FileNotFoundError, match="fedcogen certs --out DIR"):
        server_credentials(tmp_path)


def _ci(mean: float) -> dict:
    return {"mean": mean, "low": mean, "high": mean, "n": 3}


def test_quick_demo_report_marks_full_demo_targets_and_span_verdict_not_applicable():
    overall = {v: {"rouge_l": _ci(0.0), "fact_recall": _ci(0.0), "repeat_4gram": _ci(0.3)}
               for v in ("device_personalised", "cloud")}
    groups = {"unseen_users": {"overall": overall}}
    quick = "\n".join(demo_report.target_rows(groups, quick=True))
    assert "MISSED" not in quick and quick.count("n/a (quick)") == 4
    full = "\n".join(demo_report.target_rows(groups))
    assert "MISSED by 0.600" in full  # the full demo still says by how much it missed


def test_quick_demo_span_audit_verdict_is_marked_not_meaningful():
    setting = {"audit_pass": True, "devices_failed": 0, "n_devices": 1, "facts_seen": 0, "facts_written": 0,
               "share_seen": 0.0, "attacker_model_top1": None, "attacker_substring_top1": 0.0,
               "attacker_chance": 0.5, "rouge_l": None, "fact_recall": None, "private_tokens_withheld": 0,
               "cloud_call_fraction": 0.1}
    audit = {"tasks": 2, "users": 1, "settings": {"logit/off": setting, "logit/on": setting}, "quality_cost": {},
             "unprotected_fails": False, "protected_passes": True}
    quick = [line for line in demo_report.span_audit_lines(audit, quick=True) if line.startswith("Verdict")]
    assert quick == ["Verdict: not meaningful on the quick demo's random models, which do not write the private "
                     "facts the audit looks for (run the full demo). Measured: unprotected fails: False, protected "
                     "passes: True."]
    full = [line for line in demo_report.span_audit_lines(audit, quick=False) if line.startswith("Verdict")]
    assert full == ["Verdict: unprotected fails: False, protected passes: True."]


def test_generate_task_loader_names_file_line_and_field_of_an_oversized_or_non_utf8_line(tmp_path):
    line = json.dumps({"user_id": "u1", "instruction": "hi", "private_context": "x" * 50}).encode()
    big = write_lines(tmp_path / "big.jsonl", [line])
    with pytest.raises(ValueError, match=r"big.jsonl:1: field 'private_context': 50 characters, over the limit of 10"):
        load_tasks(str(big), "u1", limits=FieldLimits(private_context=10))
    assert len(load_tasks(str(big), "u1")) == 1
    bad = write_lines(tmp_path / "bad.jsonl", [line, b'{"user_id": "\xff"}'])
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not UTF-8 text"):
        load_tasks(str(bad), "u1")


def test_federation_metrics_file_is_strict_json_and_reads_back_as_the_run_returned(tmp_path):
    """A round without evaluation has NaN losses in memory: ``null`` in metrics.json, NaN again when read."""
    result = {"final_eval_loss": math.nan, "rounds": [{"round": 1, "train_loss": 2.5, "eval_loss": math.nan}],
              "stopped_reason": None}
    path = tmp_path / "metrics.json"
    fl_outputs.write_metrics_json(path, result)
    text = path.read_text()
    assert "NaN" not in text and json.loads(text)["rounds"][0]["eval_loss"] is None
    back = fl_outputs.read_metrics(path)
    assert math.isnan(back["final_eval_loss"]) and math.isnan(back["rounds"][0]["eval_loss"])
    assert back["rounds"][0]["train_loss"] == 2.5 and back["stopped_reason"] is None  # other nulls stay None
