"""The fedcogen Flower app as ``flwr run`` ships it: the project folder itself, or a one-file app.

Why the project folder: ``[tool.flwr.app]`` in pyproject.toml declares the ServerApp, the ClientApp
and every run setting, so ``flwr run .`` (and a deployment's ``flwr run PROJECT``) installs exactly
the project's own app as its FAB; ``fedcogen/__init__.py`` makes the FAB's ``fedcogen`` package find
its sibling ``client/``, ``server/``... folders. A one-file app (``pyproject.toml`` only, using the
installed package) is written only where the project folder cannot serve: a wheel install without
the source tree, or a test-only ClientApp (:data:`FAULT_CLIENTAPP`), which the project's own
pyproject must never name.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedcogen import source_root
from fedcogen.run_config import app_config

FEDCOGEN_SERVERAPP = "fedcogen.server.fl.fl_serverapp:app"
FEDCOGEN_CLIENTAPP = "fedcogen.client.fl.fl_clientapp:app"
FAULT_CLIENTAPP = "fedcogen.simulations.federation.fault_app:app"


def toml_value(value: Any) -> str:
    """One TOML scalar (strings quoted, booleans lower-case)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def format_run_config(config: Mapping[str, Any]) -> list[str]:
    """``flwr run --run-config`` / ``--node-config`` items ``k=v`` (values without spaces or quotes)."""
    out = []
    for key, value in config.items():
        text = toml_value(value)
        if not isinstance(value, bool | int | float) and ("'" in text or " " in str(value)):
            raise ValueError(f"run-config value for {key!r} may not contain spaces or quotes: {value!r}")
        out.append(f"{key}={text}")
    return out


def project_app_dir() -> Path | None:
    """The project folder (pyproject with ``[tool.flwr.app]``), or None for a wheel install."""
    return source_root()


def write_app(folder: Path | str, clientapp: str = FEDCOGEN_CLIENTAPP,
              overrides: Mapping[str, Any] | None = None) -> Path:
    """Write a one-file Flower app (``pyproject.toml`` only) for the *installed* fedcogen package.

    Its components are the project's ServerApp and ``clientapp``; its ``[tool.flwr.app.config]`` is
    the project's table (:func:`fedcogen.run_config.app_config`, grouped keys, updated with
    ``overrides``), so any knob can be overridden with ``flwr run --run-config`` exactly as on the
    project folder; the fault-injection app alone also declares the test-only ``testing.*`` keys.
    """
    config = {**app_config(testing=clientapp == FAULT_CLIENTAPP), **(overrides or {})}
    lines = [
        "[build-system]", 'requires = ["setuptools>=68"]', 'build-backend = "setuptools.build_meta"', "",
        "[project]", 'name = "fedcogenapp"', 'version = "1.0.0"',
        'description = "fedcogen federated sparse LoRA (uses the installed fedcogen package)"', "dependencies = []", "",
        "[tool.flwr.app]", 'publisher = "fedcogen"', "",
        "[tool.flwr.app.components]", f'serverapp = "{FEDCOGEN_SERVERAPP}"', f'clientapp = "{clientapp}"', "",
        "[tool.flwr.app.config]", *(f"{key} = {toml_value(value)}" for key, value in config.items()),
    ]
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return root


def app_dir_for(clientapp: str, scratch: Path | str) -> Path:
    """The project folder when it can serve ``clientapp``, else a one-file app written under ``scratch``."""
    project = project_app_dir()
    if project is not None and clientapp == FEDCOGEN_CLIENTAPP:
        return project
    return write_app(Path(scratch) / "flower-app", clientapp=clientapp)
