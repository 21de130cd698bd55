"""Public API of fedcogen's local Flower deployments, in one import (``from fedcogen.simulations import deploy``).

The pieces live in one module per concept: :mod:`~fedcogen.simulations.federation.supervisor` (process trees,
readiness, cleanup), :mod:`~fedcogen.simulations.deploy.deployment` (SuperLink + SuperNodes + cloud on
loopback), :mod:`~fedcogen.simulations.federation.flower_app` (the project folder as the app's FAB) and
:mod:`~fedcogen.simulations.federation.probe_app` (a model-free plumbing probe). Fault injection is the
test-only ClientApp :mod:`fedcogen.simulations.federation.fault_app`.
"""

from __future__ import annotations

from fedcogen.simulations.deploy.deployment import Deployment, DeploymentConfig, RunStatus
from fedcogen.simulations.federation.flower_app import (
    FAULT_CLIENTAPP,
    FEDCOGEN_CLIENTAPP,
    app_dir_for,
    format_run_config,
    project_app_dir,
    write_app,
)
from fedcogen.simulations.federation.probe_app import write_probe_app
from fedcogen.simulations.federation.supervisor import (
    DeploymentError,
    ManagedProcess,
    alive,
    cleanup_on_signals,
    descendants,
    free_port,
    port_open,
    stop_all,
)

__all__ = [
    "FAULT_CLIENTAPP", "FEDCOGEN_CLIENTAPP", "Deployment", "DeploymentConfig", "DeploymentError",
    "ManagedProcess", "RunStatus", "alive", "app_dir_for", "cleanup_on_signals", "descendants",
    "format_run_config", "free_port", "port_open", "project_app_dir", "stop_all", "write_app", "write_probe_app",
]
