"""A thread-pool executor whose workers are daemon threads, for gRPC servers.

Why not ``concurrent.futures.ThreadPoolExecutor``: its workers are non-daemon and an ``atexit`` hook
joins every one of them, so a single RPC handler blocked forever (a stuck stream, a lost wake-up)
keeps the interpreter from exiting even after the server was stopped; a test run then "passes and
hangs". A gRPC handler owns no state worth finishing at interpreter exit (the server was stopped or
the process is going away), so daemon workers are the right trade. The pool still joins its workers,
with a timeout, on :meth:`shutdown`.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent import futures
from typing import Any


class DaemonThreadPool(futures.Executor):
    """Minimal ``Executor``: up to ``max_workers`` lazily started daemon threads share one queue."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "daemon-pool") -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        self.max_workers = max_workers
        self.prefix = thread_name_prefix
        self._queue: queue.SimpleQueue[tuple[futures.Future, Callable, tuple, dict] | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new work after shutdown")
            future: futures.Future = futures.Future()
            self._queue.put((future, fn, args, kwargs))
            # An idle worker will pick the item up; otherwise start one while under the cap.
            if not self._idle.acquire(timeout=0) and len(self._threads) < self.max_workers:
                t = threading.Thread(
                    target=self._work, name=f"{self.prefix}_{len(self._threads)}", daemon=True
                )
                self._threads.append(t)
                t.start()
            return future

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, args, kwargs = item
            del item
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # noqa: BLE001 - handed to the future, like the stdlib pool
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del future, fn, args, kwargs
            self._idle.release()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False, timeout: float = 5.0) -> None:
        """Stop the workers once the queue is empty; ``wait`` joins them for at most ``timeout`` s each."""
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
            threads = list(self._threads)
        if cancel_futures:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
        for _ in threads:
            self._queue.put(None)
        if wait:
            for t in threads:
                t.join(timeout=timeout)
