"""Process supervisor: start commands with their own log, wait for readiness, stop whole process trees.

Why: Flower processes spawn helpers in *new sessions* (``flower-superexec`` -> ``flwr-serverapp`` /
``flwr-clientapp``; ``flwr run`` lazily starts a detached local SuperLink), so killing a process
group is not enough to clean up: we track the process tree through ``/proc`` and stop every
descendant we have seen. Tests, ``fedcogen deploy local`` and ``fedcogen simulate`` must never leave
a process behind - on normal exit, on error, on Ctrl-C or on SIGTERM - so cleanup is guaranteed
three times: ``__exit__``/``stop``, signal handlers (:func:`cleanup_on_signals`), and ``atexit``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
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

log = logging.getLogger(__name__)


class DeploymentError(RuntimeError):
    """A supervised step failed; the message names the process and quotes its log tail."""


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


def alive(pid: int, start: str | None = None) -> bool:
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


def processes_with_env(marker: str) -> dict[int, str]:
    """Live processes (pid -> start time) whose environment holds ``marker`` (``NAME=value``), this one excepted.

    Why: every process a ``flwr run`` starts (the detached SuperLink, its SuperExec, the ServerApp,
    the simulation and its Ray workers) inherits the environment, so a unique variable finds them
    all even after their parents died and they were re-parented to init, where ``/proc`` parent
    links no longer lead to them.
    """
    needle = marker.encode() + b"\0"
    found: dict[int, str] = {}
    me = os.getpid()
    for pid, (_ppid, start) in _proc_table().items():
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                env = fh.read()
        except OSError:
            continue
        if (b"\0" + env).find(b"\0" + needle) >= 0 and alive(pid, start):
            found[pid] = start
    return found


def stop_marked(marker: str, timeout: float = 10.0, sweeps: int = 8) -> int:
    """SIGTERM every process carrying ``marker`` (see :func:`processes_with_env`), SIGKILL what is left
    after ``timeout`` s; rescans until a scan finds none (at most ``sweeps``), so helpers started
    meanwhile go too: later sweeps give 1 s of grace, since what they find was started while the run
    was being stopped (CI once saw two processes outlive a fixed three sweeps). Returns how many were
    signalled."""
    signalled: set[int] = set()
    for attempt in range(sweeps):
        procs = processes_with_env(marker)
        if not procs:
            break
        for pid in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        signalled.update(procs)
        deadline = time.monotonic() + (timeout if attempt == 0 else min(timeout, 1.0))
        while time.monotonic() < deadline and any(alive(p, st) for p, st in procs.items()):
            time.sleep(0.1)
        for pid, start in procs.items():
            if alive(pid, start):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
    return len(signalled)


# The guardian's program: block until the parent's end of the pipe closes (the parent finished, or
# died by any signal, SIGKILL included), then stop every process carrying the marker.
_GUARDIAN = (
    "import sys\n"
    "sys.stdin.buffer.read()\n"
    "from fedcogen.simulations.federation.supervisor import stop_marked\n"
    "stop_marked(sys.argv[1], float(sys.argv[2]))\n"
)


@contextlib.contextmanager
def guardian(marker: str, timeout: float = 10.0) -> Iterator[subprocess.Popen[bytes]]:
    """While the block runs, a small watcher process stops every process carrying ``marker`` as soon
    as this process ends, however it ends.

    Why: SIGKILL (and a parent that dies under a service manager) gives this process no chance to
    clean up, and Flower starts its SuperLink detached, so neither process groups nor
    ``PR_SET_PDEATHSIG`` reach everything a run started. The watcher sits in its own session (a
    signal to our group does not stop it) and waits on a pipe only this process writes to: the pipe
    closes when this process exits, and then the watcher sweeps (:func:`stop_marked`). On a normal
    exit the sweep finds nothing left and the watcher ends at once.
    """
    watcher = subprocess.Popen(
        [sys.executable, "-c", _GUARDIAN, marker, str(timeout)],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
    )
    try:
        yield watcher
    finally:
        with contextlib.suppress(OSError):
            watcher.stdin.close()  # type: ignore[union-attr]
        with contextlib.suppress(subprocess.TimeoutExpired):
            watcher.wait(timeout=timeout + 5)


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
        tree: list[tuple[int, str | None]] = [(p, s) for p, s in self._seen.items() if alive(p, s)]
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
            while time.monotonic() < deadline and any(alive(p, s) for p, s in tree):
                self._reap()
                time.sleep(0.1)
            if any(alive(p, s) for p, s in tree):
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
            while time.monotonic() < deadline and any(alive(p, s) for p, s in tree):
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
