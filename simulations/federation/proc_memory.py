"""Peak memory of a run that spans many processes (Flower's SuperLink, ServerApp, Ray workers).

Why not ``resource.getrusage``: a ``flwr run`` simulation runs in processes that are not this
process's children (the local SuperLink is detached, Ray starts its workers from its raylet). What
they share is the environment ``flwr run`` was started with, so the sampler picks every process
whose environment holds a marker (``FLWR_HOME=<the run's private folder>``) plus, optionally, this
process, and sums their resident set sizes every ``interval`` seconds. RSS counts shared pages
(libraries, the Ray object store) once per process, so the sum is an upper bound of what the run
needs; the largest single process is the figure that must not grow with the number of clients.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field


def loadavg() -> list[float]:
    """The machine's 1/5/15-minute load averages (what a timing figure must be read with); [] if unknown."""
    try:
        with open("/proc/loadavg", encoding="utf-8") as fh:
            return [float(x) for x in fh.read().split()[:3]]
    except OSError:
        return []


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _has_env(pid: int, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return marker in fh.read().split(b"\0")
    except OSError:
        return False


@dataclass
class MemorySampler:
    """Context manager sampling summed / largest RSS of the marked processes in a thread."""

    env_marker: str = ""  # "NAME=value"; empty = only this process
    include_self: bool = True
    interval: float = 0.5
    peak_total_mib: float = 0.0
    peak_process_mib: float = 0.0
    peak_processes: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _seen: dict[int, bool] = field(default_factory=dict, repr=False)

    def sample(self) -> None:
        pids = [os.getpid()] if self.include_self else []
        if self.env_marker:
            marker = self.env_marker.encode()
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit() or int(entry.name) == os.getpid():
                    continue
                pid = int(entry.name)
                if pid not in self._seen:  # a process's environment never changes: decide once per pid
                    self._seen[pid] = _has_env(pid, marker)
                if self._seen[pid]:
                    pids.append(pid)
        sizes = [_rss_kib(p) / 1024.0 for p in pids]
        sizes = [s for s in sizes if s > 0]
        self.peak_total_mib = max(self.peak_total_mib, sum(sizes))
        self.peak_process_mib = max(self.peak_process_mib, max(sizes, default=0.0))
        self.peak_processes = max(self.peak_processes, len(sizes))
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sample()

    def to_dict(self) -> dict[str, float]:
        return {"peak_total_rss_mib": round(self.peak_total_mib, 1),
                "peak_process_rss_mib": round(self.peak_process_mib, 1),
                "processes": self.peak_processes, "samples": self.samples}
