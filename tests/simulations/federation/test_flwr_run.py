"""Flower's own path: ``flwr run .`` on the project folder, as a Flower user types it.

The project folder is the app (its pyproject's ``[tool.flwr.app]``); Flower ships it as a FAB
whose ``fedcogen/`` holds only the core package, so this also checks that ``fedcogen.client`` /
``fedcogen.server`` resolve to the FAB's sibling folders. The exact ``flwr`` command line is
:func:`fedcogen.simulations.federation.flwr_run.flwr_run_argv`: ``flwr run <project> --run-config FILE
--federation-config num-supernodes=N ... --stream`` against Flower's lazily started local
simulation SuperLink (private ``FLWR_HOME`` and ports; stopped with its process tree afterwards).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from fedcogen.provenance import source_digest
from fedcogen.run_config import FLSettings, RunConfigError, app_config, flatten, load_run_config
from fedcogen.simulations.federation import supervisor
from fedcogen.simulations.federation.flower_app import project_app_dir
from fedcogen.simulations.federation.flwr_run import LocalFederation, run_flwr_app

ROOT = Path(__file__).resolve().parents[3]


def test_project_folder_is_the_flower_app() -> None:
    assert project_app_dir() == ROOT
    app = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert flatten(app["config"]) == app_config()
    # what the ServerApp does with `--run-config` overrides: validated, data folder resolved
    settings = load_run_config(flatten(app["config"]), {"strategy.rounds": 1, "output.dir": "/tmp/x"})
    assert settings.rounds == 1 and settings.data_dir == "/tmp/x/data"
    assert settings.replace(rounds=2, out_dir=FLSettings().out_dir, data_dir="") == FLSettings()
    with pytest.raises(RunConfigError, match="roundz"):
        load_run_config(app["config"], {"strategy.roundz": 1})


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_flwr_run_dot_finishes_rounds_and_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "run"
    overrides = {"strategy.rounds": 2, "train.local-steps": 1, "train.batch-size": 2, "train.max-seq-len": 64,
                 "strategy.num-clients": 2, "strategy.clients-per-round": 2, "output.dir": str(out)}
    seen: list[int] = []
    original_track = supervisor.ManagedProcess.track

    def track(self: supervisor.ManagedProcess) -> dict[int, str]:
        found = original_track(self)
        seen.extend(found)
        return found

    supervisor.ManagedProcess.track = track  # type: ignore[method-assign]
    try:
        log = run_flwr_app(ROOT, overrides, LocalFederation(num_supernodes=2, num_cpus_per_client=1.0),
                           work_dir=tmp_path, timeout=480)
    finally:
        supervisor.ManagedProcess.track = original_track  # type: ignore[method-assign]
    assert "LoadClientAppError" not in log and "Traceback" not in log, log[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["completed_rounds"] == 2, log[-3000:]
    assert (out / "checkpoint.npz").is_file() and (out / "ledger.json").is_file()
    # the ServerApp ran from the FAB (no .git): its record still identifies this code by the source digest
    assert metrics["provenance"]["code"]["source_digest"] == source_digest(), metrics["provenance"]["code"]
    # the local SuperLink Flower started (and everything below it) is gone
    assert seen, "flwr run started no helper process"
    assert not [p for p in set(seen) if supervisor.alive(p)], "processes left behind"


def test_sibling_subpackages_only_for_a_source_tree(tmp_path: Path) -> None:
    from fedcogen import SUBPACKAGE_FOLDERS, source_root

    wheel = tmp_path / "site-packages" / "fedcogen"  # a wheel: subpackages inside, no pyproject beside
    wheel.mkdir(parents=True)
    assert source_root(wheel) is None
    fab = tmp_path / "fab"
    (fab / "fedcogen").mkdir(parents=True)
    (fab / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert source_root(fab / "fedcogen") is None  # a pyproject alone is not enough
    for name in SUBPACKAGE_FOLDERS:
        (fab / name).mkdir()
        (fab / name / "__init__.py").write_text("")
    assert source_root(fab / "fedcogen") == fab
