"""The grouped run configuration: one key map beside :class:`FLSettings`, equal to pyproject's table.

What a user types (pyproject, ``flwr run --run-config``, ``fedcogen simulate --config``) is grouped
(``lora.r``); Python, messages and records keep attribute names (``lora_r``). These tests hold the
two spellings together and check that a key from before the grouping fails naming its new key.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tomllib
from pathlib import Path

import pytest
from flwr.common.config import flatten_dict, parse_config_args

from fedcogen.cli import build_parser
from fedcogen.cli import simulate as simulate_cli
from fedcogen.cli.deploy import app_config_keys, fedcogen_run_config, run_local
from fedcogen.run_config import (
    ATTRIBUTES,
    RUN_KEYS,
    TEST_ONLY,
    FLSettings,
    RunConfigError,
    app_config,
    attribute_for,
    flatten,
    load_run_config,
)
from fedcogen.simulations.federation.federation import SimulationConfig, load_config_file
from fedcogen.simulations.federation.flower_app import FAULT_CLIENTAPP, FEDCOGEN_CLIENTAPP, write_app

ROOT = Path(__file__).resolve().parents[2]


def _app_table(folder: Path) -> dict:
    return tomllib.loads((folder / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def test_pyproject_table_is_the_key_map_with_the_defaults_in_order() -> None:
    table = flatten(_app_table(ROOT))
    assert list(table) == list(app_config())  # same keys, same order
    assert table == app_config()  # same values
    assert FLSettings.from_run_config(_app_table(ROOT)) == FLSettings()
    # Flower flattens the table with the same rule (the ServerApp's context.run_config)
    assert flatten_dict(_app_table(ROOT)) == table


def test_every_field_has_one_grouped_key() -> None:
    assert set(RUN_KEYS) == {f.name for f in dataclasses.fields(FLSettings)}
    assert len(set(RUN_KEYS.values())) == len(RUN_KEYS) and ATTRIBUTES == {v: k for k, v in RUN_KEYS.items()}
    keys = set(RUN_KEYS.values())
    # a key that is also a group would make TOML reject the table (`secagg = ...` and `secagg.range = ...`)
    assert not {k for k in keys if any(other.startswith(k + ".") for other in keys)}
    assert all(key == key.lower() and "_" not in key for key in keys)  # hyphenated, as Flower's keys
    groups = {key.split(".")[0] for key in keys if "." in key}
    assert {"lora", "compress", "dp", "secagg", "eval", "train", "strategy", "testing"} <= groups


def test_test_only_knobs_are_out_of_the_project_table() -> None:
    assert set(TEST_ONLY) == {"fail_prob", "fail_nodes"}
    assert not any(key.startswith("testing.") for key in app_config())
    assert not [k for k in flatten(_app_table(ROOT)) if k.startswith("testing.")]
    # they travel only when set, so an ordinary run's overrides name only keys the project declares
    assert "testing.fail-nodes" not in FLSettings().to_run_config()
    assert FLSettings(fail_nodes="1@2").to_run_config()["testing.fail-nodes"] == "1@2"


def test_only_the_fault_injection_app_declares_the_test_knobs(tmp_path: Path) -> None:
    fault = flatten(_app_table(write_app(tmp_path / "fault", clientapp=FAULT_CLIENTAPP)))
    real = flatten(_app_table(write_app(tmp_path / "real", clientapp=FEDCOGEN_CLIENTAPP)))
    assert real == app_config()
    assert fault == app_config(testing=True) and {"testing.fail-prob", "testing.fail-nodes"} <= set(fault)


def test_run_config_round_trips_and_overrides_use_grouped_keys() -> None:
    s = FLSettings(lora_r=4, density=0.2, dp_mode="client", dp_noise_multiplier=0.5, secagg_range=9.0)
    assert FLSettings.from_run_config(s.to_run_config()) == s
    assert s.to_run_config()["lora.r"] == 4 and s.to_run_config()["compress.density"] == 0.2
    # what `flwr run --run-config 'lora.r=16 dp.mode="server"'` hands the ServerApp
    loaded = load_run_config(app_config(), parse_config_args(['lora.r=16 dp.mode="server" eval.on="round"']))
    assert (loaded.lora_r, loaded.dp_mode, loaded.eval_on) == (16, "server", "round")
    assert FLSettings.from_run_config({"lora": {"r": 2}, "train": {"batch_size": 3}}).batch_size == 3  # `_` for `-`


@pytest.mark.parametrize(("old", "new"), [("lora_r", "lora.r"), ("density", "compress.density"),
                                          ("dp-noise-multiplier", "dp.noise-multiplier"), ("secagg", "secagg.mode"),
                                          ("run.rounds", "strategy.rounds"), ("out_dir", "output.dir")])
def test_a_flat_key_from_before_the_grouping_is_an_error_naming_the_new_key(old: str, new: str) -> None:
    with pytest.raises(RunConfigError, match=f"'{old}' is now '{new}'"):
        attribute_for(old)
    with pytest.raises(RunConfigError, match=f"is now '{new}'"):
        load_run_config(app_config(), {old: 1})


def test_an_unknown_key_is_an_error_listing_the_grouped_keys() -> None:
    with pytest.raises(RunConfigError, match=r"unknown run config key 'lora\.rank'.*lora\.r, "):
        load_run_config({}, {"lora.rank": 4})
    # attribute-named APIs point a grouped key to its attribute name
    with pytest.raises(RunConfigError, match="'lora.r' is a grouped run-config key.*'lora_r'"):
        FLSettings.from_mapping({"lora.r": 4})


def test_simulate_config_files_use_grouped_keys(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text('engine = "loopback"\nseed = 3\n[lora]\nr = 4\n[compress]\ndensity = 0.05\n')
    values = load_config_file(toml)
    assert values == {"engine": "loopback", "seed": 3, "lora_r": 4, "density": 0.05}
    cfg = SimulationConfig.from_dict(values)
    assert (cfg.run.lora_r, cfg.run.density, cfg.engine) == (4, 0.05, "loopback")
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"rounds": 3, "engine": "loopback"}))
    with pytest.raises(RunConfigError, match="'rounds' is now 'strategy.rounds'"):
        load_config_file(old)


def test_print_config_reads_back_as_a_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    simulate_cli.register(parser.add_subparsers())
    args = parser.parse_args(["simulate", "--lora-r", "4", "--engine", "loopback", "--print-config"])
    assert args.func(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["lora.r"] == 4 and "lora_r" not in printed
    (tmp_path / "printed.json").write_text(json.dumps(printed))
    again = SimulationConfig.from_dict(load_config_file(tmp_path / "printed.json"))
    assert again == simulate_cli.build_config(args)


def test_deploy_local_sends_grouped_keys_the_app_declares(tmp_path: Path) -> None:
    cfg = fedcogen_run_config(tmp_path, nodes=3, rounds=1, model="tiny", seed=0, min_fit=2)
    assert set(cfg) <= app_config_keys(ROOT) and cfg["strategy.num-clients"] == 3
    assert load_run_config(app_config(), cfg).min_fit_clients == 2


def test_deploy_local_refuses_a_flat_override_before_starting_anything(tmp_path: Path) -> None:
    args = build_parser().parse_args(["deploy", "local", "--out", str(tmp_path), "--run-config", "lora_r=4"])
    with pytest.raises(RunConfigError, match="'lora_r' is now 'lora.r'"):
        run_local(args)
    assert not (tmp_path / "logs").exists()  # no process was started


def test_shared_random_support_settings_and_their_errors() -> None:
    s = FLSettings(support="random", density=0.02, clients_per_round=4, seed=9)
    # the uploads all share one support, so the broadcast's default density is that support's
    assert s.effective_down_density() == 0.02 and s.replace(support="topk").effective_down_density() == 0.08
    assert s.support_seed(3) == s.support_seed(3) != s.support_seed(4)
    assert s.replace(support="topk").support_seed(3) is None
    assert FLSettings.from_run_config({"compress.support": "random"}).support == "random"
    assert "support" in FLSettings(support="random").client_config()  # clients learn it from the server
    with pytest.raises(RunConfigError, match="'support' = 'seeded'.*'topk', 'random'"):
        FLSettings(support="seeded")
    with pytest.raises(RunConfigError, match="'scope' = 'global'.*per tensor"):
        FLSettings(support="random", scope="global")
    with pytest.raises(RunConfigError, match="'index_coding' = 'rice'.*no indices"):
        FLSettings(support="random", index_coding="rice")
    with pytest.raises(RunConfigError, match="'secagg' = 'secaggplus'.*its own shared support"):
        FLSettings(support="random", secagg="secaggplus", num_clients=2)
