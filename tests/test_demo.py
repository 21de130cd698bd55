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
    # federation: real rounds, real byte ledger, sparse smaller than dense
    assert fed["completed_rounds"] == 2
    assert fed["ledger_summary"]["train_dense_ratio"] > 1.0
    assert all(r["bytes_up"] > 0 for r in fed["rounds"] if r["round"] > 0)
    assert Path(fed["adapter_dir"], "adapter_config.json").is_file()
    # evaluation: every variant, labelled upper bound leaks, private variants do not
    for v in ("cloud", "device", "device_personalised", "sketch", "logit", "gated", "cloud_with_context"):
        assert v in ev["overall"], v
        assert ev["overall"][v]["rouge_l"]["mean"] is not None
    assert ev["overall"]["cloud_with_context"]["leaked_facts"]["mean"] > 0
    assert ev["overall"]["sketch"]["leaked_facts"]["mean"] == 0
    assert pv["wire_audit"]["cloud_with_context"]["pass"] is False
    assert pv["wire_audit_pass_private_variants"] is True
    for key in ("canary_exposure_mean", "mia_auc", "mia_tpr_at_1pct_fpr"):
        assert isinstance(pv[key], float)
    assert _finite_numbers({"federation": fed["rounds"], "privacy": pv, "overall": ev["overall"]}) == []
    report = (run / "report.md").read_text()
    assert report.startswith("# fedcogen demo") and "| variant |" in report
    for png in ("loss_vs_round.png", "loss_vs_bytes_dense_vs_sparse.png", "eval_quality_vs_bytes.png",
                "eval_latency.png"):
        assert (run / png).stat().st_size > 1000, png
    assert _cloud_processes(str(run / "tls")) == []
    assert "report:" in capsys.readouterr().out


def test_cloud_is_stopped_when_the_demo_fails_halfway(tmp_path, monkeypatch):
    from fedcogen.simulations import demo, evaluate

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
