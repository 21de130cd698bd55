"""`fedcogen eval` input handling and exit codes (in-process, generator replaced by a fake).

Validation itself comes from fedcogen.dataset; these tests check that the CLI surfaces
its problems with line and field, and that skip / reject behave as documented.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fedcogen.cli import eval as eval_cli
from fedcogen.cli import main
from fedcogen.simulations.evaluation.evaluate import EvalAnswer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


class EchoGenerator:
    """Answers with the reference for 'device' (perfect) and a fixed text for 'cloud'."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.closed = False

    def generate(self, task, variant):  # noqa: ANN001, ANN201
        if self.fail and variant == "cloud":
            raise RuntimeError("cloud went away")
        text = task.reference if variant == "device" else "hello there"
        return EvalAnswer(text=text, tokens=3, tokens_per_s=10.0, latency_s=0.1,
                                bytes_sent=0 if variant == "device" else 40,
                                cloud_received=None if variant == "device" else [task.instruction])

    def close(self) -> None:
        self.closed = True


class Factory:
    """Stands in for eval_cli.build_generator; remembers what it built and the cloud address."""

    def __init__(self) -> None:
        self.fail = False
        self.gens: list[EchoGenerator] = []
        self.addresses: list[str | None] = []

    def __call__(self, args, address, variants):  # noqa: ANN001, ANN204
        self.addresses.append(address)
        self.gens.append(EchoGenerator(fail=self.fail))
        return self.gens[-1]


@pytest.fixture
def fake(monkeypatch):
    factory = Factory()
    monkeypatch.setattr(eval_cli, "build_generator", factory)
    return factory


def run(*argv: str) -> int:
    return main(["eval", *argv])


def test_skip_reports_line_and_field_and_evaluates_valid_lines(fake, tmp_path, capsys):
    out = tmp_path / "res.json"
    rc = run("--dataset", str(FIXTURES / "eval_invalid.jsonl"), "--variants", "device", "--json", str(out),
             "--no-progress")
    err = capsys.readouterr().err
    assert rc == 0
    lines = [ln for ln in err.splitlines() if ln.startswith("skipping invalid line")]
    assert len(lines) == 3, err
    assert lines[0].startswith("skipping invalid line: eval_invalid.jsonl:2: invalid JSON")
    assert "eval_invalid.jsonl:3: field 'reference': missing" in lines[1]
    assert "eval_invalid.jsonl:4: field 'private_facts': expected a list of strings" in lines[2]
    data = json.loads(out.read_text())
    assert data["meta"]["tasks"] == 2 and data["meta"]["invalid_lines"] == 3
    assert len(data["invalid_lines"]) == 3
    assert data["overall"]["device"]["rouge_l"]["mean"] == pytest.approx(1.0)
    assert fake.gens[0].closed and fake.addresses == [None]


def test_reject_lists_every_problem_and_exits_2(fake, tmp_path, capsys):
    out = tmp_path / "res.json"
    rc = run("--dataset", str(FIXTURES / "eval_invalid.jsonl"), "--variants", "device", "--json", str(out),
             "--on-invalid", "reject")
    err = capsys.readouterr().err
    assert rc == 2
    assert "3 invalid line(s)" in err and "(--on-invalid reject)" in err
    for where in ("eval_invalid.jsonl:2: invalid JSON", "eval_invalid.jsonl:3: field 'reference'",
                  "eval_invalid.jsonl:4: field 'private_facts'"):
        assert where in err
    assert not out.exists() and not fake.gens  # nothing generated, nothing written


def test_valid_file_with_reject_runs_and_writes_report(fake, tmp_path, capsys):
    data_dir = tmp_path / "fed"
    data_dir.mkdir()
    shutil.copy(FIXTURES / "eval_tasks.jsonl", data_dir / "tasks.jsonl")
    shutil.copy(FIXTURES / "eval_profiles.jsonl", data_dir / "profiles.jsonl")  # picked up by default
    out, report = tmp_path / "res.json", tmp_path / "rep" / "eval.md"
    rc = run("--dataset", str(data_dir / "tasks.jsonl"), "--variants", "device,cloud", "--cloud", "127.0.0.1:1", "--insecure",
             "--json", str(out), "--report", str(report), "--on-invalid", "reject", "--max-tasks", "2",
             "--no-progress")
    assert rc == 0, capsys.readouterr().err
    data = json.loads(out.read_text())
    assert data["meta"]["tasks"] == 2 and data["meta"]["profiles"].endswith("profiles.jsonl")
    assert data["overall"]["device"]["style_match"]["n"] == 1
    assert data["overall"]["cloud"]["leaked_facts"]["mean"] == 0
    assert report.is_file() and (tmp_path / "rep" / "eval_latency.png").is_file()
    assert "| device | 1 |" in report.read_text()
    # the result says what made it: the command's flags (no handler, no token) and seed
    prov = data["provenance"]
    assert prov["seeds"] == {"seed": 0} and prov["settings"]["max_tasks"] == 2
    assert prov["settings"]["variants"] == "device,cloud" and not {"func", "token"} & set(prov["settings"])


def test_generation_failures_exit_1_but_write_results(fake, tmp_path, capsys):
    fake.fail = True
    out = tmp_path / "res.json"
    rc = run("--dataset", str(FIXTURES / "eval_tasks.jsonl"), "--variants", "device,cloud", "--cloud", "h:1", "--insecure",
             "--json", str(out), "--no-progress")
    assert rc == 1
    assert "3 of 6 generations failed" in capsys.readouterr().err
    assert json.loads(out.read_text())["overall"]["cloud"]["rouge_l"]["n"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--variants", "device,warp"], "unknown variant(s) warp"),
        (["--variants", "logit"], "need a cloud"),
        (["--variants", "device_personalised"], "needs --adapter"),
        (["--variants", "device,device"], "twice"),
        (["--max-tasks", "0"], "--max-tasks must be >= 1"),
        (["--variants", "cloud", "--cloud", "h:1"], "--cloud needs --tls-dir DIR"),
        (["--profiles", "/nonexistent/profiles.jsonl"], "does not exist"),
    ],
)
def test_argument_errors_exit_2_with_one_clear_line(fake, tmp_path, capsys, args, message):
    rc = run("--dataset", str(FIXTURES / "eval_tasks.jsonl"), "--json", str(tmp_path / "o.json"),
             *(["--variants", "device"] if "--variants" not in args else []), *args)
    err = capsys.readouterr().err
    assert rc == 2 and message in err
    assert err.startswith("fedcogen eval: error:")


def test_missing_dataset_and_all_invalid(fake, tmp_path, capsys):
    assert run("--dataset", str(tmp_path / "nope.jsonl"), "--variants", "device", "--json",
               str(tmp_path / "o.json")) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n{}\n")
    assert run("--dataset", str(bad), "--variants", "device", "--json", str(tmp_path / "o.json")) == 2
    assert "no valid tasks" in capsys.readouterr().err


def test_help_explains_format_variants_and_exit_codes(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for needle in ("private_facts", "cloud_with_context", "--on-invalid", "exit codes", "bootstrap"):
        assert needle in text
