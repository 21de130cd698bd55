"""The demo's cloud: the committed public LoRA by default, passed to the cloud process and named in the report."""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from fedcogen.dataset import FederationConfig, generate_federation
from fedcogen.simulations.cloud.artifact import committed_artifact
from fedcogen.simulations.demo import demo
from fedcogen.simulations.demo.demo_report import cloud_adapter_sentence


def test_the_default_cloud_runs_the_committed_public_artifact_and_quick_runs_none(tmp_path):
    info = demo.resolve_cloud_adapter(demo.DemoConfig(out=str(tmp_path)))
    assert info["path"] == str(committed_artifact()) and "committed" in info["source"]
    assert info["weights_sha256"][:12] in cloud_adapter_sentence(info)
    quick = demo.resolve_cloud_adapter(demo.DemoConfig(out=str(tmp_path), quick=True))
    assert quick["path"] is None and "without a LoRA" in cloud_adapter_sentence(quick)
    with pytest.raises(FileNotFoundError, match="cloud_adapter"):
        demo.resolve_cloud_adapter(demo.DemoConfig(out=str(tmp_path), cloud_adapter=str(tmp_path / "missing")))


def test_the_cloud_process_is_started_with_the_adapter(tmp_path, monkeypatch):
    seen: dict = {}

    @contextmanager
    def fake_cloud(model, **kwargs):
        seen.update(kwargs, model=model)
        raise RuntimeError("stop after the start")
        yield  # pragma: no cover

    monkeypatch.setattr(demo, "spawned_cloud", fake_cloud)
    cfg = demo.DemoConfig(out=str(tmp_path), quick=True)
    fed = generate_federation(FederationConfig(n_users=cfg.run.num_clients + cfg.heldout_users, seed=0))
    with pytest.raises(RuntimeError, match="stop after the start"):
        demo._evaluate(cfg, fed, "unused", tmp_path, "token", "/the/cloud/lora")
    args = list(seen["serve_args"])
    assert args[args.index("--adapter") + 1] == "/the/cloud/lora"
