"""The committed cloud artifact: where it is and whether it is exactly what the recipe trained.

Why committed: training the cloud on the public corpus takes about half an hour on the project's 2
CPU cores, which the 15-minute ``make demo`` budget cannot hold. So the artifact (a ~2 MB fp16 LoRA)
sits in ``artifacts/`` beside the recipe that made it, and is only used when its manifest names the
digest of ``recipe.json`` as it is now and its weights hash to the digest the manifest recorded.
A changed recipe or a changed file is refused with the command that rebuilds it.
"""

from __future__ import annotations

import json
from pathlib import Path

from fedcogen.simulations.cloud.public_corpus import DEFAULT_RECIPE, CloudRecipe
from fedcogen.simulations.cloud.train_public import MANIFEST_FILE, WEIGHTS_FILE, artifact_dir, sha256_file

ARTIFACTS = Path(__file__).with_name("artifacts")
REBUILD = "fedcogen cloud train-public --out simulations/cloud/artifacts"


class ArtifactError(ValueError):
    """The committed artifact is missing or does not match its recipe or its recorded digest."""


def verify_artifact(folder: str | Path, recipe: CloudRecipe) -> dict:
    """The artifact's manifest, after checking it was trained from ``recipe`` and its weights are intact."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise ArtifactError(f"no cloud artifact in {folder} (expected {MANIFEST_FILE} and {WEIGHTS_FILE}); "
                            f"rebuild it with `{REBUILD}`")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("recipe_digest") != recipe.digest():
        raise ArtifactError(f"{folder} was trained from recipe {str(manifest.get('recipe_digest'))[:12]}, "
                            f"not the current one {recipe.digest()[:12]}; rebuild it with `{REBUILD}`")
    actual = sha256_file(folder / WEIGHTS_FILE)
    if actual != manifest.get("weights_sha256"):
        raise ArtifactError(f"{folder / WEIGHTS_FILE} has sha256 {actual[:12]}, its manifest recorded "
                            f"{str(manifest.get('weights_sha256'))[:12]}: the file changed; rebuild it with `{REBUILD}`")
    return manifest


def committed_artifact(recipe_file: str | Path = DEFAULT_RECIPE, root: str | Path = ARTIFACTS) -> Path:
    """The verified artifact folder of the recipe in ``recipe_file`` (the demo's cloud adapter)."""
    recipe = CloudRecipe.load(recipe_file)
    folder = artifact_dir(root, recipe)
    verify_artifact(folder, recipe)
    return folder
