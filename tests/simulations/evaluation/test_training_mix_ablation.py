"""The training-mix ablation (issue 26 item 2): config checks, and 2-arm runs with the tiny model."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from fedcogen.cli import main
from fedcogen.simulations.evaluation import training_mix_ablation as ab
from fedcogen.simulations.evaluation.evaluate import EvalAnswer

ROOT = Path(__file__).resolve().parents[3]
TINY = ROOT / "tests" / "fixtures" / "ablation_tiny.toml"
REAL = ROOT / "simulations" / "evaluation" / "ablations" / "training_mix.toml"


def tiny_raw() -> dict:
    raw = tomllib.loads(TINY.read_text())
    raw["eval"]["foreign_set"] = str(ROOT / raw["eval"]["foreign_set"])
    return raw


# --------------------------------------------------------------------------------------------
# config


def test_the_committed_config_has_the_four_arms_in_order_with_their_settings():
    cfg = ab.load_config(REAL)
    assert [a.name for a in cfg.arms] == ["full", "no-fact-swaps", "no-format-variety", "no-distractors-or-absent"]
    assert cfg.baseline == "full"
    full, swaps, fmt, dist = cfg.arms
    assert (full.run.fact_swaps, full.data.format_variety, full.data.distractor_facts,
            full.data.absent_fact_percent) == (3, True, 4, 15)
    assert full.data.variety == "rich" and full.data.n_users == 12 and full.data.max_context_words == 150
    assert (full.run.model, full.run.lora_r, full.run.rounds, full.run.clients_per_round, full.run.local_steps,
            full.run.lr, full.run.server_lr, full.run.density) == ("smollm2-27l", 16, 6, 2, 7, 4e-3, 1.5, 0.3)
    assert swaps.run.fact_swaps == 0 and swaps.data == full.data
    assert fmt.data.format_variety is False and fmt.run == full.run
    assert (dist.data.distractor_facts, dist.data.absent_fact_percent) == (0, 0) and dist.run == full.run
    assert (cfg.eval.max_new_tokens, cfg.eval.batch_size, cfg.eval.foreign_tasks_per_user,
            cfg.eval.unseen_tasks_per_user) == (96, 8, 1, 4)


@pytest.mark.parametrize(("change", "named"), [
    (lambda r: r.update(extra={}), "unknown table 'extra'"),
    (lambda r: r["data"].update(n_user=3), "[arms.full] data: unknown key 'n_user'"),
    (lambda r: r["run"].update({"lora.rank": 4}), "unknown run config key 'lora.rank'"),
    (lambda r: r["run"].update({"train.lr": "fast"}), "'lr' = 'fast' is not a float"),
    (lambda r: r["arms"]["no-fact-swaps"].update(train={}), "[arms.no-fact-swaps] unknown key 'train'"),
    (lambda r: r["arms"]["no-fact-swaps"].update(data={"absent_fact_percent": 150}), "absent_fact_percent"),
    (lambda r: r["ablation"].update(baseline="nope"), "baseline = 'nope' is not an arm"),
    (lambda r: r["ablation"].update(base="full"), "[ablation] unknown key 'base'"),
    (lambda r: r["eval"].update(max_new_tokens=0), "max_new_tokens must be >= 1"),
    (lambda r: r["eval"].update(batch=8), "[eval] unknown key 'batch'"),
    (lambda r: r["run"].update({"strategy.num-clients": 3}), "must be below data 'n_users' = 3"),
    (lambda r: r.update(arms={}), "[arms] is missing or empty"),
    (lambda r: r["arms"].update(bad=3), "[arms.bad] must be a table"),
])
def test_a_bad_config_is_an_error_naming_the_key(change, named):
    raw = tiny_raw()
    change(raw)
    with pytest.raises(ab.AblationConfigError) as err:
        ab.parse_config(raw, "x.toml")
    assert named in str(err.value) and "x.toml" in str(err.value)


def test_arm_overrides_apply_to_that_arm_only():
    cfg = ab.parse_config(tiny_raw())
    full, swaps = cfg.arms
    assert (full.run.fact_swaps, swaps.run.fact_swaps) == (1, 0)
    assert swaps.overrides == {"data": {}, "run": {"data.fact-swaps": 0}}
    assert [a.name for a in ab.select_arms(cfg, ["no-fact-swaps"])] == ["no-fact-swaps"]
    with pytest.raises(ab.AblationConfigError, match="unknown arm"):
        ab.select_arms(cfg, ["nope"])


def test_cli_check_and_bad_config_exit_codes(tmp_path, capsys):
    assert main(["ablation", "--config", str(TINY), "--check"]) == 0
    assert "no-fact-swaps: " in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.read_text().replace("[arms.full]", "[arms.full]\nrun = { \"lora.rnk\" = 2 }"))
    assert main(["ablation", "--config", str(bad), "--check"]) == 2
    err = capsys.readouterr().err
    assert "fedcogen ablation: error:" in err and "lora.rnk" in err


def test_verdict_is_tie_when_the_interval_spans_zero():
    assert ab.verdict({"n": 4, "low": 0.01, "high": 0.2}) == "higher"
    assert ab.verdict({"n": 4, "low": -0.2, "high": -0.01}) == "lower"
    assert ab.verdict({"n": 4, "low": -0.1, "high": 0.1}) == "tie"
    assert ab.verdict({"n": 0}) == "n/a"


# --------------------------------------------------------------------------------------------
# runs (tiny model: seconds)


class ReferenceWriter:
    """Answers with the reference (the arm that 'learned') or with nothing (the arm that did not)."""

    def __init__(self, good: bool) -> None:
        self.good = good

    def generate(self, task, variant):
        return EvalAnswer(text=task.reference if self.good and variant == "device_personalised" else "")


def test_a_removed_part_that_lowers_both_metrics_is_reported_as_carrying_gain(tmp_path):
    cfg = ab.parse_config(tiny_raw(), "tiny.toml")
    snapshots = []
    result = ab.run_ablation(cfg, tmp_path / "out", tmp_path / "a.json",
                             make_generator=lambda arm, _adapter, _ev: ReferenceWriter(arm.name == "full"),
                             on_update=lambda r: snapshots.append({n: a["status"] for n, a in r["arms"].items()}))
    # written before the first arm, after the first arm (a partial run still reports), after the second
    assert snapshots == [{"full": "pending", "no-fact-swaps": "pending"},
                         {"full": "done", "no-fact-swaps": "pending"},
                         {"full": "done", "no-fact-swaps": "done"}]
    assert json.loads((tmp_path / "a.json").read_text())["arms"]["no-fact-swaps"]["status"] == "done"
    # the same fixed sets for both arms: 12 foreign users, the one user past the 2 training clients
    assert result["sets"]["unseen_users"]["users"] == ["user-02"]
    assert len(result["sets"]["foreign"]["users"]) == 12
    full, swaps = result["arms"]["full"], result["arms"]["no-fact-swaps"]
    assert full["eval"]["foreign"]["rouge_l"]["mean"] == pytest.approx(1.0)
    assert swaps["eval"]["foreign"]["rouge_l"]["mean"] == pytest.approx(0.0)
    d = swaps["vs_baseline"]["foreign"]["rouge_l"]
    assert d["mean"] == pytest.approx(-1.0) and d["verdict"] == "lower" and d["n"] == 12
    assert any("foreign: no-fact-swaps - full" in c and "carries gain" in c for c in result["conclusions"])
    assert "vs_baseline" not in full
    # the base device answered once, with the first arm
    assert result["base_device"]["evaluated_with_arm"] == "full"
    assert json.loads((tmp_path / "out/arms/full/eval.json").read_text())["variants"] == [
        "device_personalised", "device"]
    assert json.loads((tmp_path / "out/arms/no-fact-swaps/eval.json").read_text())["variants"] == [
        "device_personalised"]
    assert full["training"]["completed_rounds"] == 1 and len(full["training"]["train_loss_by_round"]) == 1
    assert result["config"]["arms"]["no-fact-swaps"]["run"]["fact_swaps"] == 0
    assert result["provenance"]["seeds"] == {"data": 0, "run": 0, "eval": 0}
    assert result["provenance"]["code"]["commit"]
    md = ab.report_markdown(result)
    assert "| no-fact-swaps |" in md and "-1.000 [-1.000, -1.000] lower" in md


def test_a_failed_arm_is_recorded_and_the_next_arm_still_runs(tmp_path):
    cfg = ab.parse_config(tiny_raw(), "tiny.toml")

    def make(arm, _adapter, _ev):
        if arm.name == "full":
            raise RuntimeError("model did not load")
        return ReferenceWriter(True)

    result = ab.run_ablation(cfg, tmp_path / "out", tmp_path / "a.json", make_generator=make)
    assert result["arms"]["full"]["status"] == "failed"
    assert "model did not load" in result["arms"]["full"]["error"]
    assert result["arms"]["no-fact-swaps"]["status"] == "done"
    assert "vs_baseline" not in result["arms"]["no-fact-swaps"]  # no baseline to pair with
    assert "Not finished: full (failed)" in ab.report_markdown(result)


def test_cli_runs_two_arms_with_the_tiny_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the config names the foreign set relative to the project root
    out = tmp_path / "res.json"
    assert main(["ablation", "--config", str(TINY), "--out-dir", str(tmp_path / "run"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "[ablation] arm 1/2 full: training tiny" in printed and "[ablation] arm 2/2 no-fact-swaps" in printed
    data = json.loads(out.read_text())
    assert [a["status"] for a in data["arms"].values()] == ["done", "done"]
    assert data["arms"]["no-fact-swaps"]["vs_baseline"]["unseen_users"]["users"] == 1
    assert data["base_device"]["sets"]["foreign"]["tasks"] == 12
    assert out.with_suffix(".md").read_text().startswith("# Training-mix ablation")
    assert (tmp_path / "run/arms/no-fact-swaps/federation/adapter/adapter_config.json").is_file()
