"""`fedcogen privacy` plumbing: canary contexts, MIA splits, config handling, budget refusal, CLI."""

from __future__ import annotations

import json

import pytest

from fedcogen import dataset as d
from fedcogen.cli import main
from fedcogen.simulations.evaluation.report import privacy_report
from fedcogen.simulations.privacy import privacy_run as pr
from fedcogen.simulations.privacy.attack_runs import mia_pairs


@pytest.fixture(scope="module")
def fed():
    return d.generate_federation(d.FederationConfig(n_users=3, seed=0, canary_repeats=2))


def test_federation_canaries_follow_training_text(fed):
    cans = d.canary_records(fed)
    assert len(cans) == sum(len(v) for v in fed.canaries.values())
    by_id = {h.text_id: h for h in fed.history}
    for c in cans:
        assert c["text"].endswith(c["secret"]) and c["prefix"].endswith(c["text"][: -len(c["secret"])])
        planted = by_id[fed.planted_in[c["owner"]][c["text"]][0]]
        assert (c["prefix"] + c["secret"]) in planted.text  # the exact training sequence
        assert c["prompt"].startswith("Write a")
    import numpy as np

    alt = d.random_canary_like(cans[0], np.random.default_rng(0))["secret"]
    assert len(alt) == len(cans[0]["secret"]) and alt != cans[0]["secret"]


def test_mia_pairs_disjoint_and_balanced(fed):
    members, non = mia_pairs(fed, 10, seed=0)
    assert len(members) == len(non) == 10
    assert not {t for _, t in members} & {t for _, t in non}
    one_user, _ = mia_pairs(fed, 100, seed=0, users=["user-01"])
    refs = {t.reference for t in fed.tasks_of("user-01", "train")}
    assert one_user and all(t in refs for _, t in one_user)


def test_config_file_and_validation(tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"rounds": 5, "sweep": [0, 2.0]}))
    cfg = pr.load_config(f, quick=True)
    assert cfg.run.rounds == 5 and cfg.run.model == "tiny" and cfg.sigmas() == [0.0, 1.0, 2.0]
    f.write_text(json.dumps({"roundz": 5}))
    with pytest.raises(ValueError, match="roundz"):
        pr.load_config(f, quick=True)
    with pytest.raises(ValueError, match="dp_mode"):
        pr.quick_config(dp_mode="none")
    with pytest.raises(ValueError, match="variant"):
        pr.quick_config(variants=["telepathy"])


def test_run_refuses_budget_up_front(tmp_path, capsys):
    rc = main(["privacy", "run", "--quick", "--json", str(tmp_path / "x.json"), "--out", str(tmp_path / "o"),
               "--target-epsilon", "1.0"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "target 1.0" in err and "at most" in err
    assert not (tmp_path / "o" / "data").exists()  # refused before generating anything


def test_epsilon_cli(capsys):
    assert main(["privacy", "epsilon", "--noise-multiplier", "1.0", "--sample-rate", "1", "--rounds", "2",
                 "--target-epsilon", "8"]) == 0
    out = capsys.readouterr().out
    assert "epsilon = 7.077" in out and "at most 2 rounds" in out


def test_markdown_report_renders():
    row = {
        "noise_multiplier": 0.0, "epsilon": None, "utility_eval_loss": 2.0,
        "canary_exposure": {"mean": 5.0, "max": 6.0, "chance": 1.44},
        "mia": {"loss": {"auc": 0.9}, "reference": {"auc": 0.8}, "tpr_at_1pct_fpr": 0.3},
        "single_update_mia": {"auc": 0.7},
    }
    dp_row = dict(row, noise_multiplier=1.0, epsilon=7.1, utility_eval_loss=2.05,
                  canary_exposure={"mean": 1.2, "max": 2.0, "chance": 1.44},
                  mia={"loss": {"auc": 0.51}, "reference": {"auc": 0.5}, "tpr_at_1pct_fpr": 0.0})
    result = {
        "config": pr.quick_config().to_dict(), "sweep": [row, dp_row], "context_leakage": {
            "sketch": {"verbatim_rate": 0.0, "substring_top1": 0.0, "model_top1": 0.1, "chance": 0.05}},
        "wire_audit": {"sketch": {"pass": True, "n_failed": 0, "n_devices": 2}}, "relative_eval_loss_increase": 0.025,
        "noise_multiplier": 1.0, "epsilon": 7.1, "delta": 1e-5, "utility_eval_loss": 2.05, "baseline_eval_loss": 2.0,
        "canary_exposure": 1.2, "canary_exposure_no_dp": 5.0, "canary_exposure_chance": 1.44, "mia_auc": 0.51,
        "mia_auc_no_dp": 0.9, "mia_tpr_at_1pct_fpr": 0.0, "wire_audit_pass": True, "flower_bytes_audited": 10,
        "seconds": 1.0,
    }
    md = privacy_report(result, ["privacy_utility.png"])
    assert "| 1 | 7.10 |" in md and "+2.5%" in md and "PASS" in md and "(target <= 8: met)" in md
