"""Run the fedcogen Flower app with ``flwr run`` on a private local simulation SuperLink.

Why ``flwr run`` and not an in-process API: in flwr 1.41 ``flwr.simulation.run_simulation`` is
deprecated ("use ``flwr run`` in the CLI instead") and Flower offers no other in-process
simulation entry point. ``flwr run APP`` with the default ``:local:`` connection lazily starts a
SuperLink in simulation mode (``flower-superlink --simulation``, detached), which installs the
app's FAB and runs the ServerApp and the ClientApps in Flower's simulation engine. This module
drives exactly that path (what a user's ``flwr run .`` does), with four changes that make it safe
to call from experiments, tests and CI:

* a private ``FLWR_HOME`` (never ``~/.flwr``) and free ports for the local SuperLink
  (``FLWR_LOCAL_SUPERLINK_HTTP_API_PORT`` / ``FLWR_LOCAL_CONTROL_API_PORT``), so parallel runs and
  other Flower users never collide;
* runtime dependency installation off (``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1``): the
  running environment already holds the app's dependencies, and Flower would otherwise ``uv sync``
  them (torch included) into a fresh environment for every run;
* the federation size and Ray resources passed with ``--federation-config``;
* the SuperLink that Flower leaves running is stopped afterwards with its whole process tree
  (:class:`~fedcogen.simulations.federation.supervisor.ManagedProcess` tracks it while ``flwr run`` streams),
  and so is everything the run started when this process is stopped: SIGINT and SIGTERM unwind
  into that cleanup, and a watcher (:func:`~fedcogen.simulations.federation.supervisor.guardian`) stops every
  process carrying this run's environment marker when this process dies any other way (SIGKILL);
* the outcome comes from the ServerApp's own record (:mod:`fedcogen.server.fl.run_status`), not from
  ``flwr run``'s exit status, which is 0 even when the ServerApp raised: a failed, stopped or
  missing record raises :class:`RunFailed` with the ServerApp's own error.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcogen.run_config import RUN_KEYS
from fedcogen.server.fl.run_status import COMPLETED, FAILED, RunStatus, clear_run_status, read_run_status
from fedcogen.simulations.federation.flower_app import toml_value
from fedcogen.simulations.federation.supervisor import (
    DeploymentError,
    ManagedProcess,
    cleanup_on_signals,
    free_port,
    guardian,
    stop_marked,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalFederation:
    """The simulated federation ``flwr run`` starts: size and Ray resources."""

    num_supernodes: int
    num_cpus_per_client: float = 0.5
    num_cpus: int = 0  # 0 = every CPU of this machine
    # GPU share each simulated client reserves (0.25 = four clients per GPU; docs/gpu.md). 0 = none:
    # Ray then hides the GPUs from the clients, so a client's device "auto" is the CPU
    num_gpus_per_client: float = 0.0
    log_to_driver: bool = False  # Ray worker output (model loading bars, warnings) on the terminal
    ray_address: str = ""  # an existing Ray cluster ("HOST:PORT"); "" = a private Ray instance per run

    def federation_config(self) -> list[str]:
        # Flower's federation config takes whole CPUs only; Ray's CPUs are logical, so a fractional
        # share becomes 1 CPU per client out of proportionally more logical CPUs (same concurrency)
        cpus = self.num_cpus or os.cpu_count() or 2
        values: dict[str, Any] = {
            "num-supernodes": self.num_supernodes,
            "client-resources-num-cpus": 1,
            "client-resources-num-gpus": float(self.num_gpus_per_client),
            "init-args-num-cpus": max(1, int(cpus / self.num_cpus_per_client)),
            "init-args-num-gpus": 0,
            "init-args-log-to-driver": self.log_to_driver,
        }
        if self.num_gpus_per_client > 0:
            del values["init-args-num-gpus"]  # Ray counts this machine's GPUs itself
        if self.ray_address:
            # an existing cluster brings its own CPUs (Ray refuses num_cpus/num_gpus when connecting);
            # each simulated client still asks for 1 of them
            values.pop("init-args-num-cpus")
            values.pop("init-args-num-gpus", None)
        return [f"{k}={toml_value(v)}" for k, v in values.items()]

    def env(self) -> dict[str, str]:
        """Environment for ``flwr run`` (the local SuperLink and its simulation inherit it): ``RAY_ADDRESS``
        makes Flower's ``ray.init()`` join the cluster instead of starting a private Ray instance."""
        return {"RAY_ADDRESS": self.ray_address} if self.ray_address else {}


def flwr_run_argv(app_dir: Path, run_config_file: Path, federation: LocalFederation) -> list[str]:
    """``flwr run APP --run-config FILE --federation-config ... --stream`` with this interpreter's ``flwr``."""
    argv = [str(Path(sys.executable).parent / "flwr"), "run", str(app_dir), "--run-config", str(run_config_file)]
    for item in federation.federation_config():
        argv += ["--federation-config", item]
    return [*argv, "--stream"]


# the variable that marks every process of one run (see supervisor.processes_with_env)
RUN_MARKER_ENV = "FEDCOGEN_FLWR_RUN"


class RunFailed(DeploymentError):
    """The federation did not do what was asked; the message ends with the cause (the ServerApp's
    own error where it left one)."""


# a Python exception line in the run's log (``ValueError: ...``, ``fedcogen.x.CheckpointError: ...``)
EXCEPTION_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w*(?:Error|Exception|Exit|Interrupt)): (.+)$")


def cause_from_log(text: str) -> str:
    """The last exception line in a run's log (what a traceback ends with), or ''."""
    for line in reversed(text.splitlines()):
        m = EXCEPTION_LINE.match(line)
        if m:
            return f"{m.group(1)}: {m.group(2).strip()}"
    return ""


def outcome(out_dir: Path, started: float, log_text: str, log_path: Path) -> RunStatus:
    """This run's record, or :class:`RunFailed` naming why there is no completed one."""
    status = read_run_status(out_dir, not_before=started)
    if status is not None and status.status == COMPLETED:
        return status
    if status is not None and status.status == FAILED:
        cause = f"ServerApp: {status.error}"
    else:  # no record (the ServerApp never ran) or still "running" (it was stopped before it could say why):
        # the last error in Flower's log (the simulation or a SuperNode's ClientApp) is the best cause there is
        found = cause_from_log(log_text)
        what = "the ServerApp never started" if status is None else "the ServerApp ended without finishing"
        cause = f"{what}; last error in the log: {found}" if found else f"{what} and the log names no error"
    raise RunFailed(f"the federation failed (full log: {log_path})\n{cause}")


# fedcogen's own log lines inside the run's log (after any progress-bar residue on the same line)
# (group 1: the level, group 2: the message)
OWN_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (INFO|WARNING|ERROR) fedcogen\.\S+: (.*)")


def run_flwr_app(app_dir: Path | str, run_config: Mapping[str, Any], federation: LocalFederation,
                 work_dir: Path | str, timeout: float = 1800.0, echo: bool = False) -> str:
    """Run ``flwr run`` on ``app_dir`` with ``run_config`` overrides (grouped keys); returns its log text.

    ``work_dir`` receives ``flwr-home/`` (the private Flower config, FAB install, SuperLink
    database) and ``flwr-run.log`` (everything ``flwr run --stream`` printed). Raises
    :class:`DeploymentError` with the log tail when ``flwr run`` fails or times out, and
    :class:`RunFailed` with the ServerApp's error when the ServerApp did not complete (checked when
    ``run_config`` names an absolute ``out_dir``, where the ServerApp leaves its record). ``echo``
    copies the streamed log to this process's stdout as well.
    """
    work = Path(work_dir).resolve()
    home = work / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    out_dir = Path(str(run_config.get(RUN_KEYS["out_dir"], "")))
    checked = out_dir.is_absolute()
    if checked:
        clear_run_status(out_dir)  # an old record must never pass for this run's
    started = time.time()
    marker = f"{RUN_MARKER_ENV}={uuid.uuid4().hex}"
    fd, name = tempfile.mkstemp(prefix="run-config-", suffix=".toml", dir=work)
    with os.fdopen(fd, "w") as fh:
        fh.write("".join(f"{key} = {toml_value(value)}\n" for key, value in run_config.items()))
    # the ray_address setting is the one source of truth: an exported RAY_ADDRESS must not redirect a private run
    env = {
        **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        "FLWR_HOME": str(home),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
        **federation.env(),
        RUN_MARKER_ENV: marker.partition("=")[2],  # every process of this run inherits it
    }
    proc = ManagedProcess(name="flwr-run", argv=flwr_run_argv(Path(app_dir), Path(name), federation),
                          log_path=work / "flwr-run.log", env=env, cwd=Path(app_dir))
    log.info("flwr run %s (%d simulated SuperNodes); log %s", app_dir, federation.num_supernodes, proc.log_path)
    deadline = time.monotonic() + timeout
    # SIGTERM/SIGHUP unwind like Ctrl-C into the `finally` below; SIGKILL leaves it to the guardian
    with cleanup_on_signals(), guardian(marker):
        proc.start()
        try:
            shown = 0
            while proc.running:
                proc.track()  # the detached local SuperLink and its helpers, to stop them afterwards
                shown = _echo(proc.read_log(), shown, everything=echo)
                if time.monotonic() > deadline:
                    raise DeploymentError(f"flwr run exceeded {timeout:.0f} s; log tail:\n{proc.log_tail()}")
                time.sleep(0.5)
            text = proc.read_log()
            _echo(text + "\n", shown, everything=echo)
            if checked:
                outcome(out_dir, started, text, proc.log_path)
            if proc.returncode != 0:
                raise DeploymentError(f"flwr run exited with code {proc.returncode}; log {proc.log_path}:\n"
                                      f"{proc.log_tail(40)}")
            return text
        finally:
            proc.stop(timeout=15)  # SIGTERM the SuperLink Flower left running, its SuperExec and simulation
            stop_marked(marker, timeout=10)  # whatever the tree walk missed (re-parented helpers)
            Path(name).unlink(missing_ok=True)


def _echo(text: str, shown: int, everything: bool) -> int:
    """Copy the new part of the run's log to stdout: all of it (``-v``), or only fedcogen's own lines
    (the per-round summaries) by default; returns how far the log has been read."""
    if everything:
        sys.stdout.write(text[shown:])
        sys.stdout.flush()
        return len(text)
    end = text.rfind("\n") + 1  # whole lines only: a line still being written is read next time
    for line in text[shown:end].splitlines():
        m = OWN_LINE.search(line)
        if m:  # an INFO line reads as plain text, like the CLI's own (see cli.configure_logging)
            print(m.group(2) if m.group(1) == "INFO" else m.group(0), flush=True)
    return max(shown, end)
