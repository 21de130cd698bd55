"""Local multi-process Flower deployment of fedcogen on loopback (SuperLink, SuperNodes, cloud).

Why: the simulation engine runs every client inside one Ray process; a deployment has separate
processes talking TLS over sockets, node authentication, crashes and restarts. :class:`Deployment`
starts SuperLink with TLS + SuperNode authentication, registered node keys, N SuperNodes (each its
own key and ``partition-id``), an optional cloud service, a private Flower config (``FLWR_HOME``
inside the out dir, never ``~/.flwr``), and submits runs of the project's own Flower app (the
project folder is the FAB, see :mod:`fedcogen.simulations.federation.flower_app`) with ``flwr run``.
Only loopback addresses and ports we pick ourselves are ever used.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedcogen.protocols.security.secrets_io import CLOUD_TOKEN_ENV
from fedcogen.simulations.deploy.certs import create_cert_bundle, load_bundle
from fedcogen.simulations.deploy.deployment_config import (
    ROUND_RE,
    DeploymentConfig,
    RunStatus,
)
from fedcogen.simulations.federation.flower_app import format_run_config
from fedcogen.simulations.federation.supervisor import (
    DeploymentError,
    ManagedProcess,
    cleanup_on_signals,
    free_port,
    port_open,
)

log = logging.getLogger(__name__)


def flwr_run_args(app_dir: Path, connection: str, run_config: Mapping[str, Any]) -> list[str]:
    """``flwr`` arguments that submit a run with ``run_config``: every ``k=v`` in *one* ``--run-config``.

    Why one: Flower parses each ``--run-config`` into a nested dict and merges them one level deep, so
    ``--run-config output.dir=A --run-config output.resume=true`` keeps only ``output.resume`` (the second
    ``output`` table replaces the first); a single space-separated string is parsed as one table.
    ``format_run_config`` refuses values with spaces, so the joined string splits back unambiguously.
    """
    items = format_run_config(run_config)
    return ["run", str(app_dir), connection, *(["--run-config", " ".join(items)] if items else [])]

class Deployment:
    """A local multi-process Flower deployment on loopback; use as a context manager.

    >>> with Deployment(DeploymentConfig(out_dir=Path("runs/deploy"), nodes=2)) as dep:  # doctest: +SKIP
    ...     dep.start()
    ...     run_id = dep.submit_run({"num-server-rounds": 2})
    ...     dep.wait_run(run_id)
    """

    def __init__(self, config: DeploymentConfig) -> None:
        self.config = config
        self.out = config.out_dir
        self.logs = self.out / "logs"
        self.flwr_home = self.out / "flwr-home"
        self.superlink: ManagedProcess | None = None
        self.supernodes: dict[int, ManagedProcess] = {}
        self.cloud: ManagedProcess | None = None
        self.followers: list[ManagedProcess] = []
        self.superlink_port: int | None = None
        self.cloud_port: int | None = None
        self.node_ids: dict[int, int] = {}
        self.bundle: Any = None
        self.cloud_token = config.cloud_token or secrets.token_urlsafe(24)
        self._signals: contextlib.ExitStack | None = None

    # ---- context manager -----------------------------------------------------------------------
    def __enter__(self) -> Deployment:
        self._signals = contextlib.ExitStack()
        self._signals.enter_context(cleanup_on_signals())
        self.prepare()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            if self._signals is not None:
                self._signals.close()

    # ---- setup ---------------------------------------------------------------------------------
    @property
    def bin_dir(self) -> Path:
        """Folder of this interpreter's console scripts (flower-*, flwr, fedcogen)."""
        return Path(sys.executable).parent

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env["FLWR_HOME"] = str(self.flwr_home)
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
        return env

    def prepare(self) -> None:
        """Create folders and certificates, pick the SuperLink port."""
        self.out.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        os.chmod(self.flwr_home, 0o700)
        if self.config.tls:
            certs = self.config.certs_dir or (self.out / "certs")
            if (Path(certs) / "index.json").is_file():
                self.bundle = load_bundle(certs)
            else:
                self.bundle = create_cert_bundle(certs, nodes=self.config.nodes)
            if self.bundle.nodes < self.config.nodes:
                raise ValueError(f"{certs} holds {self.bundle.nodes} node keys, need {self.config.nodes}")
        if self.superlink_port is None:
            self.superlink_port = free_port(self.config.host)
        self.write_flower_config()

    @property
    def superlink_address(self) -> str:
        return f"{self.config.host}:{self.superlink_port}"

    def write_flower_config(self, connection: str | None = None, insecure: bool | None = None) -> Path:
        """Write the private Flower config (``FLWR_HOME/config.toml``) with the named SuperLink connection."""
        name = connection or self.config.connection
        insecure = (not self.config.tls) if insecure is None else insecure
        lines = ["[superlink]", f'default = "{name}"', "", f"[superlink.{name}]", f'address = "{self.superlink_address}"']
        if insecure:
            lines.append("insecure = true")
        else:
            lines.append(f'root-certificates = "{self.bundle.ca_cert}"')
        path = self.flwr_home / "config.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    # ---- processes -----------------------------------------------------------------------------
    def _proc(self, name: str, argv: list[str], **kw: Any) -> ManagedProcess:
        return ManagedProcess(name=name, argv=argv, log_path=self.logs / f"{name}.log", env=self.env(),
                              cwd=self.out, **kw)

    def superlink_argv(self) -> list[str]:
        argv = [str(self.bin_dir / "flower-superlink"), "--host", self.config.host, "--port", str(self.superlink_port),
                "--disable-runtime-dependency-installation"]
        if self.config.tls:
            argv += ["--ssl-ca-certfile", str(self.bundle.ca_cert), "--ssl-certfile", str(self.bundle.superlink_cert),
                     "--ssl-keyfile", str(self.bundle.superlink_key)]
        else:
            argv += ["--insecure"]
        if self.config.node_auth:
            argv += ["--enable-supernode-auth"]
        if self.config.persistent_state:
            state = self.out / "state"
            state.mkdir(exist_ok=True)
            argv += ["--database", str(state / "superlink.db")]
        return argv

    def start_superlink(self) -> ManagedProcess:
        if self.superlink is None:
            self.superlink = self._proc(
                "superlink", self.superlink_argv(), ready_port=self.superlink_port,
                ready_pattern=r"Application startup complete", fail_patterns=(r"Exit Code: \d+",),
            )
        self.superlink.start()
        self.superlink.wait_ready(self.config.startup_timeout)
        return self.superlink

    def restart_superlink(self) -> ManagedProcess:
        """Start the SuperLink again on the same port (after :meth:`ManagedProcess.kill`, say)."""
        if self.superlink is None:
            return self.start_superlink()
        if self.superlink.running:
            self.superlink.stop(self.config.stop_timeout)
        deadline = time.monotonic() + 30
        while port_open(self.config.host, int(self.superlink_port)) and time.monotonic() < deadline:
            time.sleep(0.2)  # a SIGKILLed SuperLink's helpers may hold the port for a moment
        self.superlink.start()
        self.superlink.wait_ready(self.config.startup_timeout)
        return self.superlink

    def node_key(self, k: int) -> tuple[Path, Path]:
        return self.bundle.node_private_keys[k], self.bundle.node_public_keys[k]

    def register_node(self, k: int, public_key: Path | None = None) -> int:
        """``flwr supernode register`` node ``k``'s public key; returns the node id the SuperLink assigned."""
        pub = public_key or self.node_key(k)[1]
        data = self.flwr_json(["supernode", "register", str(pub), self.config.connection])
        if not data.get("success"):
            raise DeploymentError(f"registering {pub} failed: {data}")
        self.node_ids[k] = int(data["node-id"])
        return self.node_ids[k]

    def supernode_argv(self, k: int, private_key: Path | None = None, insecure: bool = False,
                       extra_config: Mapping[str, Any] | None = None, port: int | None = None,
                       extra_args: Sequence[str] = ()) -> list[str]:
        node_cfg = {"partition-id": k, "num-partitions": self.config.nodes, **self.config.node_config,
                    **self.config.per_node_config.get(k, {}), **(extra_config or {})}
        argv = [str(self.bin_dir / "flower-supernode"), "--superlink", self.superlink_address,
                "--node-config", " ".join(format_run_config(node_cfg)),
                "--host", self.config.host, "--port", str(port or free_port(self.config.host))]
        if insecure or not self.config.tls:
            argv += ["--insecure"]
        else:
            argv += ["--root-certificates", str(self.bundle.device_dir / "ca.crt")]
            if self.config.node_auth and not insecure:
                argv += ["--auth-supernode-private-key", str(private_key or self.node_key(k)[0])]
        return argv + list(extra_args)

    def start_supernode(self, k: int, *, wait: bool = True, name: str | None = None, **kw: Any) -> ManagedProcess:
        """Start SuperNode ``k`` (partition ``k``); ``wait`` blocks until the SuperLink activated it."""
        proc = self.supernodes.get(k) if name is None else None
        if proc is None:
            proc = self._proc(name or f"supernode-{k}", self.supernode_argv(k, **kw),
                              ready_pattern=r"SuperNode ID: \d+", fail_patterns=(r"Exit Code: \d+",))
            if name is None:
                self.supernodes[k] = proc
            else:
                self.followers.append(proc)  # extra nodes (e.g. an intruder) are stopped with the rest
        proc.start()
        if wait:
            proc.wait_ready(self.config.startup_timeout)
        return proc

    def start_cloud(self, model: str | None = None) -> ManagedProcess:
        """``fedcogen cloud serve`` with TLS (the bundle's cloud folder) and a bearer token."""
        if self.cloud is None:
            self.cloud_port = free_port(self.config.host)
            argv = [str(self.bin_dir / "fedcogen"), "cloud", "serve", "--model", model or self.config.cloud_model,
                    "--port", str(self.cloud_port)]
            if self.config.tls:
                argv += ["--tls-dir", str(self.bundle.cloud_dir)]
            self.cloud = self._proc("cloud", argv, ready_port=self.cloud_port,
                                    fail_patterns=(r"Traceback \(most recent call last\)", r"error:"))
            # the token reaches the cloud through its environment (owner-only), never through argv
            self.cloud.env = {**(self.cloud.env or {}), CLOUD_TOKEN_ENV: self.cloud_token}
        self.cloud.start()
        self.cloud.wait_ready(self.config.startup_timeout)
        return self.cloud

    def start(self, register: bool = True, cloud: bool | None = None) -> None:
        """SuperLink, node registrations, every SuperNode, and the cloud service if configured."""
        self.start_superlink()
        if self.config.node_auth and register:
            for k in range(self.config.nodes):
                self.register_node(k)
        for k in range(self.config.nodes):
            self.start_supernode(k, wait=False)
        for k in range(self.config.nodes):
            self.supernodes[k].wait_ready(self.config.startup_timeout)
        if cloud if cloud is not None else self.config.with_cloud:
            self.start_cloud()

    def all_processes(self) -> list[ManagedProcess]:
        procs = [*self.followers, *self.supernodes.values()]
        if self.cloud:
            procs.append(self.cloud)
        if self.superlink:
            procs.append(self.superlink)
        return procs

    def stop(self) -> None:
        """Stop everything this deployment started: followers, SuperNodes, cloud, SuperLink (in that order)."""
        errors = []
        for proc in self.all_processes():
            try:
                proc.stop(self.config.stop_timeout)
            except Exception as exc:  # keep stopping the others
                errors.append(f"{proc.name}: {exc}")
        if errors:
            log.warning("errors while stopping: %s", "; ".join(errors))

    # ---- flwr CLI ------------------------------------------------------------------------------
    def flwr(self, args: Sequence[str], timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the ``flwr`` CLI with this deployment's private Flower config."""
        argv = [str(self.bin_dir / "flwr"), *args]
        res = subprocess.run(argv, env=self.env(), cwd=self.out, capture_output=True, text=True, timeout=timeout)
        with open(self.logs / "flwr-cli.log", "a", encoding="utf-8") as fh:
            fh.write(f"$ {' '.join(argv)}\n[rc={res.returncode}]\n{res.stdout}{res.stderr}\n")
        if check and res.returncode != 0:
            raise DeploymentError(f"`flwr {' '.join(args)}` failed (rc {res.returncode}): "
                                  f"{(res.stdout + res.stderr).strip()[-2000:]}")
        return res

    def flwr_json(self, args: Sequence[str], timeout: float = 120.0) -> dict[str, Any]:
        res = self.flwr([*args, "--format", "json"], timeout=timeout)
        text = res.stdout
        start = text.find("{")
        if start < 0:
            raise DeploymentError(f"`flwr {' '.join(args)}` printed no JSON: {text.strip()[-500:]}")
        try:
            return json.JSONDecoder().raw_decode(text[start:])[0]
        except json.JSONDecodeError as exc:
            raise DeploymentError(f"`flwr {' '.join(args)}` printed invalid JSON ({exc}): {text[-500:]}") from exc

    def submit_run(self, run_config: Mapping[str, Any] | None = None, follow: bool = True) -> int:
        """``flwr run APP CONNECTION --run-config 'k=v ...'``; returns the run id (and follows its log into logs/)."""
        data = self.flwr_json(flwr_run_args(self.config.app_dir, self.config.connection, run_config or {}))
        if not data.get("success") or data.get("run-id") is None:
            raise DeploymentError(f"flwr run did not start a run: {data}")
        run_id = int(data["run-id"])
        if follow:
            self.follow_run(run_id)
        return run_id

    def follow_run(self, run_id: int) -> ManagedProcess:
        """Stream the run's logs (``flwr log RUN --stream``) into ``logs/run-<id>.log``."""
        proc = self._proc(f"run-{run_id}", [str(self.bin_dir / "flwr"), "log", str(run_id), self.config.connection,
                                            "--stream"])
        self.followers.append(proc)
        return proc.start()

    def run_status(self, run_id: int) -> RunStatus:
        data = self.flwr_json(["ls", self.config.connection, "--run-id", str(run_id)], timeout=60)
        runs = data.get("runs") or []
        if not runs:
            raise DeploymentError(f"SuperLink does not know run {run_id}: {data}")
        row = runs[0]
        return RunStatus(run_id=run_id, status=str(row.get("status")), elapsed=float(row.get("elapsed") or 0), raw=row)

    def run_log(self, run_id: int) -> str:
        path = self.logs / f"run-{run_id}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def rounds_seen(self, run_id: int) -> int:
        """Highest ``[ROUND k/N]`` the ServerApp has started (from the followed run log)."""
        found = ROUND_RE.findall(self.run_log(run_id))
        return max((int(k) for k, _ in found), default=0)

    def wait_run(self, run_id: int, timeout: float = 900.0, poll: float = 2.0, progress: bool = True,
                 watch: Sequence[ManagedProcess] | None = None) -> RunStatus:
        """Block until the run finishes; a progress bar shows rounds. Raises if a watched process dies."""
        from tqdm import tqdm

        deadline = time.monotonic() + timeout
        bar = tqdm(total=None, desc=f"run {run_id}", unit="round", disable=not progress, leave=False)
        try:
            while True:
                for proc in [*(watch if watch is not None else self.all_processes())]:
                    proc.track()
                found = ROUND_RE.findall(self.run_log(run_id))
                if found:
                    bar.total = int(found[-1][1])
                    bar.n = max(int(k) for k, _ in found)
                    bar.refresh()
                status = self.run_status(run_id)
                if status.finished:
                    return status
                for proc in (watch or []):
                    if not proc.running:
                        raise DeploymentError(f"{proc.name} died during run {run_id}:\n{proc.log_tail()}")
                if time.monotonic() > deadline:
                    raise DeploymentError(f"run {run_id} not finished after {timeout:.0f} s (status {status.status})")
                time.sleep(poll)
        finally:
            bar.close()

    def describe(self) -> dict[str, Any]:
        """Ports, pids and log files of everything started (for the JSON/markdown report)."""
        procs = {}
        for proc in self.all_processes():
            procs[proc.name] = {"pid": proc.pid, "running": proc.running, "returncode": proc.returncode,
                                "starts": proc.starts, "log": str(proc.log_path), "argv": proc.argv}
        return {
            "superlink_address": self.superlink_address,
            "cloud_port": self.cloud_port,
            "connection": self.config.connection,
            "flwr_home": str(self.flwr_home),
            "tls": self.config.tls,
            "node_auth": self.config.node_auth,
            "node_ids": {str(k): v for k, v in self.node_ids.items()},
            "certs": str(self.bundle.root) if self.bundle else None,
            "processes": procs,
        }
