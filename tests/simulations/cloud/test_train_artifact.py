"""The cloud's public training: a cached, digest-named artifact, exact checkpoints, and the committed one."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from fedcogen.simulations.cloud.artifact import ArtifactError, committed_artifact, verify_artifact
from fedcogen.simulations.cloud.public_corpus import DEFAULT_RECIPE, CloudRecipe
from fedcogen.simulations.cloud.train_public import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    artifact_dir,
    sha256_file,
    train_public,
)

TINY = CloudRecipe(base_model="tiny", public_users=4, tasks_per_user=2, exclude_users=12, steps=4, batch_size=2,
                   lora_first_layer=1, max_seq_len=64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("art")
    return root, train_public(TINY, root, checkpoint_every=2, log=lambda _m: None)


def test_training_writes_a_verified_fp16_artifact_named_by_the_recipe_digest(trained):
    root, folder = trained
    assert folder == artifact_dir(root, TINY) and TINY.digest()[:12] in folder.name
    manifest = verify_artifact(folder, TINY)
    assert manifest["recipe"] == dataclasses.asdict(TINY) and len(manifest["losses"]) == TINY.steps
    from safetensors.torch import load_file

    weights = load_file(str(folder / WEIGHTS_FILE))
    assert weights and {str(v.dtype) for v in weights.values()} == {"torch.float16"}
    # LoRA only from lora_first_layer on: the tiny model has layers 0 and 1
    assert all(".layers.1." in k for k in weights)
    assert any(float(v.abs().max()) > 0 for k, v in weights.items() if "lora_B" in k)  # it trained
    # nothing of the training machine in the artifact: the config names the preset, no model-card README
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny"
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", WEIGHTS_FILE, MANIFEST_FILE]


def test_a_checkpoint_is_the_artifact_of_the_same_recipe_with_fewer_steps(trained):
    root, _ = trained
    half = dataclasses.replace(TINY, steps=2)
    manifest = verify_artifact(artifact_dir(root, half), half)
    assert len(manifest["losses"]) == 2


def test_a_finished_recipe_is_reused_not_retrained(trained):
    root, folder = trained
    before = sha256_file(folder / WEIGHTS_FILE)
    lines: list[str] = []
    assert train_public(TINY, root, log=lines.append) == folder
    assert lines and lines[0].startswith("cached") and sha256_file(folder / WEIGHTS_FILE) == before


def test_a_changed_weights_file_or_recipe_is_refused(trained, tmp_path):
    _, folder = trained
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    with pytest.raises(ArtifactError, match="not the current one"):
        verify_artifact(copy, dataclasses.replace(TINY, lr=TINY.lr * 2))
    data = bytearray((copy / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (copy / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="file changed"):
        verify_artifact(copy, TINY)
    (copy / MANIFEST_FILE).unlink()
    with pytest.raises(ArtifactError, match="no cloud artifact"):
        verify_artifact(copy, TINY)


def test_the_committed_artifact_matches_the_committed_recipe_and_its_digest():
    folder = committed_artifact()
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    recipe = CloudRecipe.load(DEFAULT_RECIPE)
    assert manifest["recipe_digest"] == recipe.digest()
    assert manifest["weights_sha256"] == sha256_file(folder / WEIGHTS_FILE)
    assert (folder / WEIGHTS_FILE).stat().st_size < 8 * 2**20  # a few MB, fit to commit
