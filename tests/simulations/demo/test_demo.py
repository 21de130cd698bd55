"""`fedcogen demo --quick` end to end: real Flower simulation, real gRPC cloud process with TLS, tiny models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fedcogen.cli import main

pytestmark = pytest.mark.slow


def _cloud_processes(marker: str) -> list[int]:
    """PIDs of live `fedcogen cloud serve` processes whose command line mentions ``marker``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().split()[2]
        except OSError:
            continue
        if "cloud serve" in cmd and marker in cmd and state != "Z":
            pids.append(int(proc.name))
    return pids


def _finite_numbers(obj, path="") -> list[str]:
    """Paths of non-finite floats inside a JSON-like object."""
    bad = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            bad += _finite_numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            bad += _finite_numbers(v, f"{path}[{i}]")
    elif isinstance(obj, float) and not math.isfinite(obj):
        bad.append(path)
    return bad


def test_quick_demo_writes_every_promised_field_and_stops_the_cloud(tmp_path, capsys):
    rc = main(["demo", "--quick", "--out", str(tmp_path), "--name", "q"])
    assert rc == 0
    run = tmp_path / "q"
    metrics = json.loads((run / "metrics.json").read_text())
    fed, ev, pv = metrics["federation"], metrics["evaluation"], metrics["privacy"]
    # federation: real rounds; the headline total is every message both ways, and it adds up
    assert fed["completed_rounds"] == 2
    totals = fed["ledger_summary"]["totals"]
    assert totals["all"] == totals["up"] + totals["down"] > 0
    assert sum(r["bytes_up"] + r["bytes_down"] for r in fed["rounds"]) == totals["all"]
    assert totals.get("evaluate_down", 0) > 0  # broadcasts inside evaluate messages are counted too
    assert all(r["bytes_up"] > 0 for r in fed["rounds"] if r["round"] > 0)
    assert Path(fed["adapter_dir"], "adapter_config.json").is_file()
    # evaluation: seen and unseen users apart, every variant, repetition measured
    seen, unseen = ev["groups"]["seen_users"], ev["groups"]["unseen_users"]
    assert seen["users"] and unseen["users"] and not set(seen["users"]) & set(unseen["users"])
    trained = {k for r in fed["rounds"] for k in r.get("clients", [])} | set(
        json.loads((run / "federation" / "ledger.json").read_text())["summary"]["per_client"])
    assert not trained & set(unseen["users"])  # held-out users never sent or received a message
    overall = ev["all_users"]["overall"]
    for v in ("cloud", "device", "device_personalised", "sketch", "logit", "gated", "cloud_with_context"):
        for group in (seen, unseen, ev["all_users"]):
            assert v in group["overall"], v
            assert group["overall"][v]["rouge_l"]["mean"] is not None
        assert "repeat_4gram" in overall[v] and "cloud_call_fraction" in overall[v]
    assert overall["cloud_with_context"]["leaked_facts"]["mean"] > 0
    assert overall["sketch"]["leaked_facts"]["mean"] == 0
    assert 0 < overall["gated"]["cloud_call_fraction"]["mean"] < 1
    # the foreign-format set is its own group: its users are not the federation's, each variant answered
    foreign = ev["groups"]["foreign_set"]
    assert len(foreign["users"]) == 2 and not set(foreign["users"]) & set(seen["users"] + unseen["users"])
    assert foreign["overall"]["device_personalised"]["foreign_facts"]["n"] == 2
    assert any(p["a"] == "device_personalised" or p["b"] == "device_personalised" for p in foreign["paired"])
    # its fact audit reads the set's answer key: the upper bound sent the context, so it saw facts; sketch none
    fa = pv["foreign_set_fact_audit"]
    assert fa["cloud_with_context"]["facts_seen"] > 0 and fa["sketch"]["facts_seen"] == 0
    assert fa["sketch"]["facts"] == fa["cloud_with_context"]["facts"] > 0
    assert metrics["provenance"]["code_changed_during_run"] is False  # nothing was committed while it ran
    assert metrics["provenance"]["code"]["commit"]
    assert ev["writer_strength"]["cloud_loss"] > 0 and ev["gate"]["threshold"] > 0
    assert pv["wire_audit"]["cloud_with_context"]["pass"] is False
    assert pv["wire_audit_pass_private_variants"] is True
    assert pv["canary_exposure_mean"] is None  # canaries are not trained on by default: not measured
    for key in ("mia_auc", "mia_tpr_at_1pct_fpr"):
        assert isinstance(pv[key], float)
    assert _finite_numbers({"federation": fed["rounds"], "privacy": pv}) == []
    report = (run / "report.md").read_text()
    assert report.startswith("# fedcogen demo") and "| variant |" in report
    assert "users who never trained" in report and "repeated 4-grams" in report
    assert "foreign-format set: ROUGE-L" in report and "foreign set, fact audit" in report
    for png in ("loss_vs_round.png", "loss_vs_bytes.png", "recall_vs_bytes.png"):
        assert (run / png).stat().st_size > 1000, png
    assert _cloud_processes(str(run / "tls")) == []
    assert "report:" in capsys.readouterr().out


def test_cloud_is_stopped_when_the_demo_fails_halfway(tmp_path, monkeypatch):
    from fedcogen.simulations.demo import demo
    from fedcogen.simulations.evaluation import evaluate

    seen: dict[str, list[int]] = {}

    def failing_evaluate(*args, **kwargs):
        seen["during"] = _cloud_processes(str(tmp_path / "f" / "tls"))
        raise RuntimeError("evaluation exploded")

    # skip training: the failure under test is in the cloud stage
    monkeypatch.setattr(demo, "_federate", lambda cfg, data_dir: {"adapter_dir": None})
    monkeypatch.setattr(evaluate, "evaluate", failing_evaluate)
    cfg = demo.DemoConfig(name="f", out=str(tmp_path), quick=True)
    with pytest.raises(RuntimeError, match="evaluation exploded"):
        demo.run_demo(cfg)
    assert len(seen["during"]) == 1  # the cloud really was running
    assert _cloud_processes(str(tmp_path / "f" / "tls")) == []


def test_demo_rejects_bad_config(tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("users = 3\nwarp_speed = 9\n")
    assert main(["demo", "--config", str(cfg)]) == 2
    assert "warp_speed" in capsys.readouterr().err


@pytest.mark.parametrize(("variants", "message"), [
    ("cloud,device,device_personalised,telepathy", "telepathy"),
    ("cloud,device", "device_personalised"),
    ("cloud,device,device_personalised,sketch,sketch", "duplicates"),
])
def test_demo_rejects_variants_it_cannot_report(variants, message, capsys):
    assert main(["demo", "--quick", "--variants", variants]) == 2
    assert message in capsys.readouterr().err


def test_demo_answers_with_the_chosen_variants_in_report_order():
    from fedcogen.simulations.demo.demo import DemoConfig

    cfg = DemoConfig(quick=True, variants="draft_edit, device_personalised,cloud,device")
    assert cfg.variant_list == ["cloud", "device", "device_personalised", "draft_edit"]
    assert "draft_edit" not in DemoConfig(quick=True).variant_list  # measured below the device: not by default
