"""Process supervisor and local multi-process deployment of fedcogen on real Flower components.

Why this exists: a Flower deployment is several long-lived processes (SuperLink, one SuperNode per
device, optionally the CoGenesis cloud service) plus the ``flwr`` CLI driving them. Each Flower
process also spawns helpers in *new sessions* (``flower-superexec`` -> ``flwr-serverapp`` /
``flwr-clientapp``), so killing a process group is not enough to clean up: we track the process
tree through ``/proc`` and stop every descendant we have seen. Tests and ``fedcogen deploy local``
must never leave a process behind - on normal exit, on error, on Ctrl-C or on SIGTERM - so cleanup
is guaranteed three times: ``__exit__``, signal handlers, and ``atexit``.

Two layers:

* :class:`ManagedProcess`: one command with its own log file: start, wait for a port or a log
  line, stop (SIGTERM, then SIGKILL after a timeout), kill (SIGKILL the whole tree, for fault
  injection), restart.
* :class:`Deployment`: SuperLink with TLS + SuperNode authentication, registered node keys,
  N SuperNodes (each its own key and ``partition-id``), optional cloud service, a private Flower
  config (``FLWR_HOME`` inside the out dir, never ``~/.flwr``), and helpers to submit a run with
  ``flwr run``, follow it and read its status.

Only loopback addresses and ports we pick ourselves are ever used.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcogen.protocols.secrets_io import CLOUD_TOKEN_ENV

log = logging.getLogger(__name__)

# Public API. ``fault_clientapp`` is created lazily by the module ``__getattr__``; listing it here is
# also what lets Flower's static app validation (an AST scan) find it.
__all__ = [
    "DeploymentError", "ManagedProcess", "Deployment", "DeploymentConfig", "RunStatus", "free_port", "port_open",
    "descendants", "stop_all", "cleanup_on_signals", "format_run_config", "write_probe_app", "write_fedcogen_app",
    "corrupt_blob", "fault_clientapp", "FAULT_CLIENTAPP", "FEDCOGEN_CLIENTAPP",  # noqa: F822
]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONNECTION = "fedcogen-local"
RUN_FINISHED_PREFIX = "finished"
ROUND_RE = re.compile(r"(?:\[ROUND |\bround )(\d+)/(\d+)")  # Flower strategies / fedcogen ServerApp


class DeploymentError(RuntimeError):
    """A deployment step failed; the message names the process and quotes its log tail."""


# --------------------------------------------------------------------------------------------------
# process-tree helpers (Linux /proc; no psutil dependency)
# --------------------------------------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, start time) for every process we can read (start time guards against pid reuse)."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="utf-8", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        # comm may hold spaces/parentheses: split after the last ')'
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 19:
            table[int(entry.name)] = (int(fields[1]), fields[19])
    return table


def descendants(pid: int) -> dict[int, str]:
    """All live descendants of ``pid`` (pid -> start time), including those in other sessions."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for child, (parent, _) in table.items():
        children.setdefault(parent, []).append(child)
    found: dict[int, str] = {}
    stack = list(children.get(pid, []))
    while stack:
        p = stack.pop()
        if p in found:
            continue
        found[p] = table[p][1]
        stack.extend(children.get(p, []))
    return found


def _alive(pid: int, start: str | None = None) -> bool:
    """True if ``pid`` exists, is not a zombie, and (if given) has the same start time as when we saw it."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return False
    fields = stat[stat.rfind(")") + 2 :].split()
    if not fields or fields[0] in ("Z", "X"):
        return False
    return start is None or (len(fields) > 19 and fields[19] == start)


def free_port(host: str = "127.0.0.1") -> int:
    """An ephemeral TCP port the kernel considers free right now on ``host`` (loopback by default)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------------
# cleanup registry: every started process is stopped at interpreter exit / on SIGTERM
# --------------------------------------------------------------------------------------------------

_LIVE: dict[int, ManagedProcess] = {}
_LIVE_LOCK = threading.Lock()


def stop_all(timeout: float = 5.0) -> None:
    """Stop every :class:`ManagedProcess` still running in this interpreter (newest first)."""
    with _LIVE_LOCK:
        procs = list(_LIVE.values())
    for proc in reversed(procs):
        with contextlib.suppress(Exception):
            proc.stop(timeout=timeout)


atexit.register(stop_all)


@contextlib.contextmanager
def cleanup_on_signals(signals: Sequence[int] = (signal.SIGTERM, signal.SIGHUP)) -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into ``SystemExit`` so ``with`` blocks (and their cleanup) unwind.

    Ctrl-C already raises ``KeyboardInterrupt``. Handlers can only be installed from the main
    thread; elsewhere (e.g. inside some test runners' worker threads) this is a no-op and the
    ``atexit`` hook remains the safety net.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}

    def _handler(signum: int, _frame: Any) -> None:
        stop_all()
        raise SystemExit(128 + signum)

    for sig in signals:
        previous[sig] = signal.signal(sig, _handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# --------------------------------------------------------------------------------------------------
# ManagedProcess
# --------------------------------------------------------------------------------------------------


@dataclass
class ManagedProcess:
    """One supervised command: own process group, own log file, tracked descendants.

    ``ready_port`` / ``ready_pattern`` define readiness for :meth:`wait_ready`; ``fail_patterns``
    make readiness fail fast with the log line instead of waiting for a timeout.
    """

    name: str
    argv: list[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    ready_host: str = "127.0.0.1"
    ready_port: int | None = None
    ready_pattern: str | None = None
    fail_patterns: tuple[str, ...] = ()
    popen: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    starts: int = field(default=0, init=False)
    _seen: dict[int, str] = field(default_factory=dict, init=False, repr=False)
    _log_offset: int = field(default=0, init=False, repr=False)

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> ManagedProcess:
        if self.running:
            raise DeploymentError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as fh:
            self._log_offset = fh.tell()
            fh.write(f"\n===== fedcogen: start #{self.starts + 1} of {self.name}: {' '.join(self.argv)}\n".encode())
            self.popen = subprocess.Popen(
                self.argv,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(self.env) if self.env is not None else None,
                cwd=str(self.cwd) if self.cwd else None,
                start_new_session=True,  # own process group: signals to us never hit it by accident
            )
        self.starts += 1
        self._seen = {}
        with _LIVE_LOCK:
            _LIVE[id(self)] = self
        log.debug("started %s pid %s: %s", self.name, self.popen.pid, " ".join(self.argv))
        return self

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def track(self) -> dict[int, str]:
        """Record current descendants (call often: children re-parented to init after a crash are lost)."""
        if self.running and self.pid is not None:
            self._seen.update(descendants(self.pid))
        return dict(self._seen)

    def _tree(self) -> list[tuple[int, str | None]]:
        self.track()
        tree: list[tuple[int, str | None]] = [(p, s) for p, s in self._seen.items() if _alive(p, s)]
        if self.running and self.pid is not None:
            tree.insert(0, (self.pid, None))
        return tree

    def _signal_tree(self, sig: int) -> None:
        for pid, _start in self._tree():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)  # our own group (same id as the leader's pid)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the process and every descendant; SIGKILL what is left after ``timeout`` seconds."""
        if self.popen is None:
            return None
        tree = self._tree()
        if tree:
            self._signal_tree(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and any(_alive(p, s) for p, s in tree):
                self._reap()
                time.sleep(0.1)
            if any(_alive(p, s) for p, s in tree):
                log.warning("%s did not stop within %.0f s after SIGTERM: sending SIGKILL", self.name, timeout)
                self.kill()
        self._reap(wait=True)
        self._forget()
        return self.returncode

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole tree at once (default SIGKILL: a crash, no chance to clean up)."""
        if self.popen is None:
            return
        tree = self._tree()
        self._signal_tree(sig)
        if sig == signal.SIGKILL:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(_alive(p, s) for p, s in tree):
                self._reap()
                time.sleep(0.05)
            self._reap(wait=True)
            self._forget()

    def restart(self, timeout: float = 10.0) -> ManagedProcess:
        self.stop(timeout=timeout)
        return self.start()

    def _reap(self, wait: bool = False) -> None:
        if self.popen is None:
            return
        if wait:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=5)
        else:
            self.popen.poll()

    def _forget(self) -> None:
        if not self.running:
            with _LIVE_LOCK:
                _LIVE.pop(id(self), None)

    # ---- readiness & logs --------------------------------------------------------------------
    def read_log(self, since_start: bool = True) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                if since_start:
                    fh.seek(self._log_offset)
                return fh.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 25) -> str:
        return "\n".join(self.read_log().splitlines()[-lines:])

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``predicate`` until true; fail early (with the log tail) if the process dies or logs a failure."""
        deadline = time.monotonic() + timeout
        while True:
            self.track()
            if predicate():
                return
            text = self.read_log()
            for pat in self.fail_patterns:
                if re.search(pat, text):
                    raise DeploymentError(f"{self.name} failed while waiting for {what}:\n{self.log_tail()}")
            if not self.running:
                raise DeploymentError(
                    f"{self.name} exited with code {self.returncode} while waiting for {what}; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise DeploymentError(f"{self.name}: no {what} within {timeout:.0f} s; log tail:\n{self.log_tail()}")
            time.sleep(0.2)

    def wait_for_log(self, pattern: str, timeout: float = 60.0) -> None:
        rx = re.compile(pattern)
        self.wait_for(lambda: bool(rx.search(self.read_log())), timeout, f"log line /{pattern}/")

    def wait_for_port(self, port: int | None = None, timeout: float = 60.0) -> None:
        port = port or self.ready_port
        if port is None:
            raise ValueError(f"{self.name}: no port to wait for")
        self.wait_for(lambda: port_open(self.ready_host, port), timeout, f"open port {self.ready_host}:{port}")

    def wait_ready(self, timeout: float = 60.0) -> None:
        started = time.monotonic()
        if self.ready_port is not None:
            self.wait_for_port(timeout=timeout)
        if self.ready_pattern is not None:
            self.wait_for_log(self.ready_pattern, timeout=max(1.0, timeout - (time.monotonic() - started)))

    def wait(self, timeout: float | None = None) -> int:
        if self.popen is None:
            raise DeploymentError(f"{self.name} was never started")
        rc = self.popen.wait(timeout=timeout)
        self._forget()
        return rc


# --------------------------------------------------------------------------------------------------
# Deployment
# --------------------------------------------------------------------------------------------------


def format_run_config(config: Mapping[str, Any]) -> list[str]:
    """``flwr run -c`` arguments (TOML values: strings quoted, booleans lower-case)."""
    out = []
    for key, value in config.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        else:
            text = json.dumps(str(value))
            if "'" in text or " " in str(value):
                raise ValueError(f"run-config value for {key!r} may not contain spaces or quotes: {value!r}")
        out.append(f"{key}={text}")
    return out


@dataclass
class DeploymentConfig:
    """What :class:`Deployment` starts and where it writes (everything lands under ``out_dir``)."""

    out_dir: Path
    nodes: int = 2
    app_dir: Path = PROJECT_ROOT
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
        from fedcogen.simulations.certs_cli import create_cert_bundle, load_bundle

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
        """``flwr run APP CONNECTION -c k=v ...``; returns the run id (and follows its log into logs/)."""
        args = ["run", str(self.config.app_dir), self.config.connection]
        for item in format_run_config(run_config or {}):
            args += ["--run-config", item]
        data = self.flwr_json(args)
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


# --------------------------------------------------------------------------------------------------
# probe app: checks a deployment's plumbing (TLS, node auth, partitions) without loading a model
# --------------------------------------------------------------------------------------------------

_PROBE_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "fedcogenprobe"
version = "1.0.0"
description = "fedcogen deployment probe: federated mean of partition ids, no model"
dependencies = []

[tool.flwr.app]
publisher = "fedcogen"

[tool.flwr.app.components]
serverapp = "fedcogenprobe.server_app:app"
clientapp = "fedcogenprobe.client_app:app"

[tool.flwr.app.config]
num-server-rounds = 2
min-nodes = 2
result-file = ""
round-timeout = 120.0
train-sleep = 0.0
payload-floats = 3
"""

_PROBE_SERVER = '''\
"""Probe ServerApp: a mean over whoever replies, recording per round which partitions replied.

Own loop (not a Flower strategy) so the result names the nodes that took part in each round, the
errors Flower reported for nodes that did not, and the round wall time (bandwidth benchmarks).
"""
import json
import time

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    rounds, min_nodes, timeout = int(cfg["num-server-rounds"]), int(cfg["min-nodes"]), float(cfg["round-timeout"])
    vec = np.zeros(int(cfg["payload-floats"]), dtype=np.float32)
    history = []
    for rnd in range(1, rounds + 1):
        print(f"[ROUND {rnd}/{rounds}]", flush=True)
        deadline = time.time() + timeout
        nodes = sorted(grid.get_node_ids())
        while len(nodes) < min_nodes and time.time() < deadline:
            time.sleep(0.5)
            nodes = sorted(grid.get_node_ids())
        started = time.time()
        conf = ConfigRecord({"round": rnd, "sleep": float(cfg["train-sleep"])})
        msgs = [Message(RecordDict({"arrays": ArrayRecord([vec]), "config": conf}), dst_node_id=n,
                        message_type=MessageType.TRAIN) for n in nodes]
        replies = list(grid.send_and_receive(msgs, timeout=timeout))
        ok = [m for m in replies if not m.has_error()]
        errors = [str(m.error.reason) for m in replies if m.has_error()]
        replied = sorted(int(m.content["metrics"]["partition-id"]) for m in ok)
        entry = {"round": rnd, "nodes": len(nodes), "replied": replied, "errors": errors,
                 "missing": len(nodes) - len(replies), "seconds": time.time() - started}
        history.append(entry)
        print(f"probe round {rnd}: replied {replied}, errors {len(errors)}, {entry['seconds']:.2f} s", flush=True)
        if len(ok) < min_nodes:
            raise RuntimeError(f"round {rnd}: {len(ok)} replies < min-nodes {min_nodes} ({errors})")
        vec = np.mean([m.content["arrays"].to_numpy_ndarrays()[0] for m in ok], axis=0).astype(np.float32)
        if cfg["result-file"]:
            with open(str(cfg["result-file"]), "w") as fh:
                json.dump({"final": vec[:3].tolist(), "rounds": history}, fh)
    print("PROBE FINAL", vec[:3].tolist(), flush=True)
'''

_PROBE_CLIENT = '''\
"""Probe ClientApp: adds (partition-id + 1) to every entry, so the mean tells who took part."""
import time

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    time.sleep(float(msg.content["config"]["sleep"]))
    arrays = [a + pid + 1.0 for a in msg.content["arrays"].to_numpy_ndarrays()]
    metrics = MetricRecord({"num-examples": 1, "partition-id": pid})
    return Message(content=RecordDict({"arrays": ArrayRecord(arrays), "metrics": metrics}), reply_to=msg)
'''


def write_probe_app(folder: Path | str) -> Path:
    """Write the probe Flower app to ``folder`` (returns it); ``flwr run FOLDER`` runs it on any deployment."""
    root = Path(folder)
    pkg = root / "fedcogenprobe"
    pkg.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(_PROBE_PYPROJECT)
    (pkg / "__init__.py").write_text('"""fedcogen deployment probe app."""\n')
    (pkg / "server_app.py").write_text(_PROBE_SERVER)
    (pkg / "client_app.py").write_text(_PROBE_CLIENT)
    return root


FEDCOGEN_CLIENTAPP = "fedcogen.client.fl_clientapp:app"
FAULT_CLIENTAPP = "fedcogen.simulations.deploy:fault_clientapp"
FAULTS = ("malformed", "oversize", "nan")


def write_fedcogen_app(folder: Path | str, overrides: Mapping[str, Any] | None = None,
                       clientapp: str = FEDCOGEN_CLIENTAPP) -> Path:
    """Write a thin Flower app folder for the *installed* fedcogen package and return it.

    Why not ``flwr run`` on the project folder itself: the FAB would carry every source file of the
    repository (and a copy of ``fedcogen/`` that shadows the installed package on the SuperNodes),
    while devices must have fedcogen installed anyway (torch, transformers). The shim's FAB holds only
    ``pyproject.toml``: components ``fedcogen.server.fl_serverapp:app`` /
    ``fedcogen.client.fl_clientapp:app`` and every :class:`~fedcogen.protocols.fl_messages.FLSettings`
    field as run config (so any knob can be overridden with ``flwr run -c``).
    """
    from fedcogen.protocols.fl_messages import FLSettings

    config = {**FLSettings().to_config(), **(overrides or {})}
    lines = [
        "[build-system]", 'requires = ["setuptools>=68"]', 'build-backend = "setuptools.build_meta"', "",
        "[project]", 'name = "fedcogenapp"', 'version = "1.0.0"',
        'description = "fedcogen federated sparse LoRA (uses the installed fedcogen package)"', "dependencies = []", "",
        "[tool.flwr.app]", 'publisher = "fedcogen"', "",
        "[tool.flwr.app.components]", 'serverapp = "fedcogen.server.fl_serverapp:app"',
        f'clientapp = "{clientapp}"', "", "[tool.flwr.app.config]",
    ]
    for key, value in config.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int | float):
            lines.append(f"{key} = {value!r}")
        else:
            lines.append(f"{key} = {json.dumps(str(value))}")
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return root


# --------------------------------------------------------------------------------------------------
# fault injection: a ClientApp that misbehaves only on SuperNodes started with --node-config fault=...
# --------------------------------------------------------------------------------------------------


def corrupt_blob(blob: bytes, fault: str, oversize_bytes: int = 64 * 1024 * 1024 + 1) -> bytes:
    """What a broken or hostile device might send instead of its real sparse update.

    ``malformed``: bytes that are not a sparse-codec blob at all; ``oversize``: the real blob padded
    past the server's byte cap; ``nan``: the same bytes with every float32-aligned word set to NaN
    (decodes, or not, depending on the codec - either way it must be rejected, never averaged in).
    """
    if fault == "malformed":
        return b"\x00fedcogen: not a sparse update\xff" * 8
    if fault == "oversize":
        return bytes(blob) + b"\x00" * max(0, oversize_bytes - len(blob))
    if fault == "nan":
        import numpy as np

        raw = bytearray(blob)
        words = np.frombuffer(bytes(raw[: len(raw) // 4 * 4]), dtype=np.float32).copy()
        words[len(words) // 2 :] = np.nan
        raw[: len(words) * 4] = words.tobytes()
        return bytes(raw)
    raise ValueError(f"unknown fault {fault!r} (known: {', '.join(FAULTS)})")


def _build_fault_clientapp() -> Any:
    """The real fedcogen ClientApp, except that ``train`` replies are corrupted on faulty nodes.

    The fault is a property of the *device* (``--node-config 'fault="malformed"'``), not of the run,
    so one deployment can mix honest and broken devices exactly like a real federation.
    """
    from flwr.clientapp import ClientApp

    from fedcogen.client import fault_app as faulty
    from fedcogen.client import fl_clientapp as real
    from fedcogen.protocols import fl_messages as fm

    app = ClientApp()
    app.query()(real.query)
    app.evaluate()(real.evaluate)

    @app.train()
    def train(msg: Any, context: Any) -> Any:
        reply = faulty.train(msg, context)  # the run's fail_nodes / fail_prob hooks, then the node's fault
        fault = str(context.node_config.get("fault", ""))
        if fault and not reply.has_error():
            update = reply.content.config_records[fm.UPDATE]
            size = int(context.node_config.get("fault-bytes", 64 * 1024 * 1024 + 1))
            update["blob"] = corrupt_blob(bytes(update["blob"]), fault, oversize_bytes=size)
            log.warning("fault injection: node %s sends a %s update", context.node_config.get("partition-id"), fault)
        return reply

    return app


_FAULT_APP: Any = None


def __getattr__(name: str) -> Any:
    """``fault_clientapp`` is built on first access so importing this module never imports flwr/torch."""
    global _FAULT_APP
    if name == "fault_clientapp":
        if _FAULT_APP is None:
            _FAULT_APP = _build_fault_clientapp()
        return _FAULT_APP
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
