"""fedcogen: federated sparse-LoRA small LMs on devices + CoGenesis collaboration with a cloud LM.

Subpackages (mapped from the repository's top-level folders, see pyproject):
  fedcogen.protocols    the contract both sides share (.proto, wire codecs, message schemas)
  fedcogen.client       what runs on a device
  fedcogen.server       what runs in the cloud or the aggregator
  fedcogen.simulations  experiments, data, benchmarks
"""

import os
from pathlib import Path

# The source-tree folder goes on the package's search path first, before any file-system call below can let
# another thread run: Flower's simulation imports the ServerApp in one thread while another validates the
# ClientApp, and a thread that finds this package half-initialised searches its subpackages only in the
# ``__path__`` it has at that moment ("No module named 'fedcogen.client'"). Checked, and kept or removed,
# at the end of this file.
_EARLY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
__path__.append(_EARLY_ROOT)  # noqa: F821 - the package's own search path

# Nothing in fedcogen ever fetches from a model hub: models come from the embedded wheel,
# a local directory, or are built from a config in code.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

__version__ = "0.1.0"

SUBPACKAGE_FOLDERS = ("client", "server", "protocols", "simulations")


def source_root(package_dir: Path = Path(__file__).resolve().parent) -> Path | None:
    """The source tree / Flower app (FAB) folder this package sits in, else None (a wheel install).

    Why: ``flwr run .`` ships the project folder as a FAB and puts it first on ``sys.path``, so the
    FAB's ``fedcogen/`` (core only) shadows the installed package, and ``fedcogen.client`` must be
    found in the sibling ``client/`` folder, exactly as pyproject's ``package-dir`` maps it. A wheel
    has the subpackages inside ``fedcogen/`` and no ``pyproject.toml`` beside it, so it is untouched.
    """
    root = package_dir.parent
    if not (root / "pyproject.toml").is_file():
        return None
    if all((root / name / "__init__.py").is_file() for name in SUBPACKAGE_FOLDERS):
        return root
    return None


_root = source_root()
if _root is not None and not (Path(__file__).resolve().parent / "client").is_dir():
    __path__[__path__.index(_EARLY_ROOT)] = str(_root)  # noqa: F821 - one step: never without the root
else:
    __path__.remove(_EARLY_ROOT)  # noqa: F821 - a wheel: its subpackages are inside this folder
