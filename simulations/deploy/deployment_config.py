"""What a local Flower deployment starts (:class:`DeploymentConfig`) and how a run reports back (:class:`RunStatus`).

Kept apart from :mod:`~fedcogen.simulations.deploy.deployment` (which starts and stops the processes) so the
settings and their validation read on one screen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcogen.simulations.federation.flower_app import project_app_dir

DEFAULT_CONNECTION = "fedcogen-local"
RUN_FINISHED_PREFIX = "finished"
ROUND_RE = re.compile(r"(?:\[ROUND |\bround )(\d+)/(\d+)")  # Flower strategies / fedcogen ServerApp


@dataclass
class DeploymentConfig:
    """What :class:`Deployment` starts and where it writes (everything lands under ``out_dir``)."""

    out_dir: Path
    nodes: int = 2
    app_dir: Path = field(default_factory=lambda: project_app_dir() or Path.cwd())
    host: str = "127.0.0.1"
    connection: str = DEFAULT_CONNECTION
    tls: bool = True
    node_auth: bool = True
    certs_dir: Path | None = None  # default: out_dir/certs (created when missing)
    with_cloud: bool = False
    cloud_model: str = "tiny"
    cloud_token: str | None = None  # default: random per deployment
    persistent_state: bool = True  # SuperLink --database file: registrations/runs survive a restart
    node_config: dict[str, Any] = field(default_factory=dict)  # extra --node-config for every node
    per_node_config: dict[int, dict[str, Any]] = field(default_factory=dict)  # e.g. {2: {"fault": "malformed"}}
    startup_timeout: float = 120.0
    stop_timeout: float = 10.0

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir).expanduser().resolve()
        self.app_dir = Path(self.app_dir).expanduser().resolve()
        if self.nodes < 1:
            raise ValueError(f"a deployment needs at least one SuperNode, got nodes={self.nodes}")
        if self.node_auth and not self.tls:
            raise ValueError("SuperNode authentication requires TLS (Flower refuses --enable-supernode-auth with --insecure)")
        if self.host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"local deployments bind loopback only, got host={self.host!r}")
        if not (self.app_dir / "pyproject.toml").is_file():
            raise FileNotFoundError(f"no Flower app at {self.app_dir} (pyproject.toml missing)")


@dataclass
class RunStatus:
    """One row of ``flwr ls --format json`` that matters to us."""

    run_id: int
    status: str
    elapsed: float
    raw: dict[str, Any]

    @property
    def finished(self) -> bool:
        return self.status.startswith(RUN_FINISHED_PREFIX)

    @property
    def completed(self) -> bool:
        return self.status == "finished:completed"
