"""Every result carries the code, settings, seeds, versions and machine that made it; a finished run is
reused only when it was made by this commit from a clean tree with the same settings."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedcogen import SUBPACKAGE_FOLDERS
from fedcogen import provenance as prov
from fedcogen.run_config import FLSettings
from fedcogen.server.fl.checkpoint import save_checkpoint
from fedcogen.simulations.bench import bench_comm
from fedcogen.simulations.federation.federation import SimulationConfig, run_federation
from fedcogen.simulations.privacy.dp_scale import DP_SCALE_RUN, DPScaleConfig, run_dp_scale

COMMIT_A, COMMIT_B = "a" * 40, "b" * 40
REPO = Path(__file__).resolve().parents[2]


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def _record(commit: str = COMMIT_A, dirty: bool = False, settings: dict[str, Any] | None = None,
            seeds: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"code": {"commit": commit, "dirty": dirty, "dirty_paths": ["x.py"] if dirty else []},
            "settings": settings if settings is not None else {"lr": 0.1, "rounds": 3},
            "seeds": seeds if seeds is not None else {"seed": 0}}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    root.mkdir()
    (root / "a.py").write_text("x = 1\n")
    _git(root, "init", "-q")
    _git(root, "add", "a.py")
    _git(root, "commit", "-qm", "one")
    return root


def test_code_state_names_the_commit_and_turns_dirty_on_an_edit(repo: Path) -> None:
    head = _git(repo, "rev-parse", "HEAD")
    clean = prov.code_state(repo)
    assert (clean["commit"], clean["dirty"], clean["dirty_paths"]) == (head, False, [])
    (repo / "a.py").write_text("x = 2\n")
    dirty = prov.code_state(repo)
    assert (dirty["commit"], dirty["dirty"], dirty["dirty_paths"]) == (head, True, ["a.py"])


def test_a_tree_outside_git_or_inside_another_repository_is_unknown(tmp_path: Path, repo: Path) -> None:
    plain = tmp_path / "wheel"
    plain.mkdir()
    assert prov.code_state(plain)["commit"] == prov.UNKNOWN
    assert prov.code_state(plain)["dirty"] is None
    inner = repo / "site-packages"  # an installed copy inside some other project's checkout
    inner.mkdir()
    assert prov.code_state(inner)["commit"] == prov.UNKNOWN


def test_the_record_reads_back_equal_and_holds_settings_seeds_versions_machine(repo: Path) -> None:
    rec = prov.provenance(settings={"targets": ("q", "v"), "out": Path("x")}, seeds={"seed": 7}, root=repo)
    back = json.loads(json.dumps(rec))
    assert back == rec  # tuples and paths already as JSON reads them back
    assert rec["settings"] == {"targets": ["q", "v"], "out": "x"} and rec["seeds"] == {"seed": 7}
    assert set(rec["packages"]) == {*prov.PACKAGES, "python"}
    assert rec["packages"]["numpy"] == np.__version__
    assert {"cores", "load_average", "memory_bytes", "platform"} <= set(rec["machine"])
    assert prov.check_reusable(back, prov.provenance(settings={"targets": ["q", "v"], "out": "x"},
                                                     seeds={"seed": 7}, root=repo)) == []


def test_a_long_run_records_the_code_it_started_with_and_says_when_the_tree_moved_on(repo: Path) -> None:
    started = prov.code_state(repo)
    still = prov.provenance(settings={}, root=repo, started=started)
    assert still["code"] == started and still["code_changed_during_run"] is False and "code_at_write" not in still
    (repo / "b.py").write_text("y = 1\n")
    _git(repo, "add", "b.py")
    _git(repo, "commit", "-qm", "two: committed while the run ran")
    moved = prov.provenance(settings={}, root=repo, started=started)
    assert moved["code"]["commit"] == started["commit"] != moved["code_at_write"]["commit"]
    assert moved["code_changed_during_run"] is True
    # the run is refused against the new commit: it was made by the code it started with
    assert any("made by commit" in d for d in prov.reuse_problems(moved, prov.provenance(settings={}, root=repo)))


def test_a_run_made_at_another_commit_is_refused_naming_both() -> None:
    with pytest.raises(prov.ReuseRefused, match=f"made by commit {COMMIT_B[:12]}, the current code is commit "
                                                f"{COMMIT_A[:12]}"):
        prov.check_reusable(_record(COMMIT_B), _record(COMMIT_A))


def test_a_dirty_tree_on_either_side_is_refused() -> None:
    with pytest.raises(prov.ReuseRefused, match=r"finished run was made from a dirty tree \(uncommitted changes: x.py"):
        prov.check_reusable(_record(dirty=True), _record())
    with pytest.raises(prov.ReuseRefused, match="current tree is a dirty tree"):
        prov.check_reusable(_record(), _record(dirty=True))


def test_settings_and_seed_differences_are_each_named_and_ignored_keys_are_not() -> None:
    old = _record(settings={"lr": 0.1, "rounds": 3, "out_dir": "a", "gone": 1})
    new = _record(settings={"lr": 0.2, "rounds": 3, "out_dir": "b", "added": True}, seeds={"seed": 1})
    problems = prov.reuse_problems(old, new, ignore=("out_dir",))
    assert problems == [
        "setting 'added' = True is new (the finished run has no such setting)",
        "setting 'gone' = 1 in the finished run no longer exists",
        "setting 'lr': finished run 0.1, now 0.2",
        "seeds differ: finished run {'seed': 0}, now {'seed': 1}",
    ]


def test_unknown_code_is_refused_unless_forced_and_forcing_still_reports() -> None:
    old, new = _record(prov.UNKNOWN), _record(prov.UNKNOWN)
    with pytest.raises(prov.ReuseRefused, match="commit unknown for the finished run's and the current code"):
        prov.check_reusable(old, new)
    assert prov.check_reusable(old, new, force=True) == [
        "commit unknown for the finished run's and the current code (not a git checkout) and the source digests "
        "differ or are missing, so the code cannot be compared"]


def test_unknown_commit_with_the_same_source_digest_is_the_same_code() -> None:
    """A run of the FAB copy `flwr run` makes (no .git) is reusable from a clean checkout of the same code."""
    old, new = _record(prov.UNKNOWN), _record(COMMIT_A)
    old["code"]["source_digest"] = new["code"]["source_digest"] = "d" * 64
    assert prov.reuse_problems(old, new) == []
    new["code"]["source_digest"] = "e" * 64
    assert prov.reuse_problems(old, new)[0].startswith("commit unknown for the finished run's code")


def _copy_sources(dest: Path, wheel: bool) -> Path:
    """The package as a FAB (project folder layout) or a wheel (subpackages inside fedcogen/); its package dir."""
    pkg = dest / "fedcogen"
    shutil.copytree(REPO / "fedcogen", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for name in SUBPACKAGE_FOLDERS:
        shutil.copytree(REPO / name, (pkg if wheel else dest) / name, ignore=shutil.ignore_patterns("__pycache__"))
    if not wheel:
        shutil.copy(REPO / "pyproject.toml", dest / "pyproject.toml")
    return pkg


def test_source_digest_is_the_same_for_a_fab_and_a_wheel_and_changes_with_the_code(tmp_path: Path) -> None:
    here = prov.source_digest()
    fab, wheel = _copy_sources(tmp_path / "fab", wheel=False), _copy_sources(tmp_path / "wheel", wheel=True)
    assert prov.source_digest(fab) == here == prov.source_digest(wheel)
    with (fab.parent / "server" / "aggregation.py").open("a") as fh:
        fh.write("# edited\n")
    assert prov.source_digest(fab) != here


def test_a_run_without_a_record_is_refused(tmp_path: Path) -> None:
    legacy = tmp_path / "metrics.json"
    legacy.write_text(json.dumps({"settings": {"lr": 0.1}}))
    assert prov.recorded(legacy) is None and prov.recorded(tmp_path / "missing.json") is None
    with pytest.raises(prov.ReuseRefused, match="has no provenance record"):
        prov.check_reusable(prov.recorded(legacy), _record())


def test_run_location_keys_are_run_config_keys() -> None:
    assert set(prov.RUN_LOCATION_KEYS) <= {f.name for f in dataclasses.fields(FLSettings)}


# ------------------------------------------------------------------ the reuse sites


def _finished_run(tmp_path: Path, commit: str, **changed: Any) -> dict[str, Any]:
    """A bench-comm run config plus a fake finished run in its folder, recorded at ``commit``."""
    cfg = {"model": "tiny", "num_clients": 2, "clients_per_round": 2, "rounds": 1, "seed": 3,
           "out_dir": str(tmp_path / "run"), "engine": "loopback"}
    s = SimulationConfig.from_dict({**cfg, **changed}).settings()
    (tmp_path / "run").mkdir(parents=True)
    rec = _record(commit, settings=s.to_config(), seeds={"seed": s.seed})
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"marker": "old run", "provenance": rec}))
    return cfg


@pytest.fixture
def at_commit_a(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prov, "code_state", lambda root=None: {"commit": COMMIT_A, "dirty": False,
                                                               "dirty_paths": []})


def test_bench_comm_reuses_a_run_of_this_commit_and_settings(tmp_path: Path, at_commit_a: None) -> None:
    cfg = _finished_run(tmp_path, COMMIT_A)
    assert bench_comm._run(cfg, reuse=True)["marker"] == "old run"


def test_bench_comm_refuses_a_run_of_another_commit_or_settings(tmp_path: Path, at_commit_a: None) -> None:
    cfg = _finished_run(tmp_path / "c", COMMIT_B)
    with pytest.raises(prov.ReuseRefused, match=f"commit {COMMIT_B[:12]}.*--force-reuse"):
        bench_comm._run(cfg, reuse=True)
    assert bench_comm._run(cfg, reuse=False, force_reuse=True)["marker"] == "old run"
    cfg = _finished_run(tmp_path / "s", COMMIT_A, lr=0.5)
    with pytest.raises(prov.ReuseRefused, match="setting 'lr': finished run 0.5, now 0.0005"):
        bench_comm._run(cfg, reuse=True)


def test_privacy_scale_refuses_a_finished_run_of_another_commit(tmp_path: Path, at_commit_a: None) -> None:
    cfg = DPScaleConfig(run=DP_SCALE_RUN.replace(model="tiny", num_clients=4, clients_per_round=2, rounds=1,
                                                 eval_clients=2), out_dir=str(tmp_path))
    run_dir = tmp_path / "no_dp"
    save_checkpoint(run_dir, {}, {"round": 1})  # finished: every round checkpointed
    (run_dir / "metrics.json").write_text(json.dumps({"provenance": _record(COMMIT_B)}))
    with pytest.raises(prov.ReuseRefused, match=f"finished run in {run_dir}: made by commit {COMMIT_B[:12]}"):
        run_dp_scale(cfg)


def test_a_federation_records_its_settings_and_seed_and_is_then_reusable(tmp_path: Path, at_commit_a: None) -> None:
    cfg = {"model": "tiny", "num_clients": 2, "clients_per_round": 2, "rounds": 1, "local_steps": 1,
           "batch_size": 2, "max_seq_len": 32, "seed": 5, "out_dir": str(tmp_path / "run"), "engine": "loopback"}
    result = run_federation(SimulationConfig.from_dict(cfg))
    rec = prov.recorded(tmp_path / "run" / "metrics.json")
    assert rec is not None and rec["code"]["commit"] == COMMIT_A
    assert rec["settings"] == result["settings"] and rec["seeds"] == {"seed": 5}
    assert bench_comm._run(cfg, reuse=True) == json.loads((tmp_path / "run" / "metrics.json").read_text())
