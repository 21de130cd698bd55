"""Exit watchdog: turn "the process finished its work but never exits" into a loud, named failure.

Why: interpreter exit joins every non-daemon thread (and every ``ThreadPoolExecutor`` worker). One
thread blocked forever (a gRPC handler waiting on a stopped batcher, a request pump on an unbounded
``Queue.get``) makes a test run print "N passed" and then hang until CI kills it, with no clue which
thread is to blame. :func:`arm` starts a daemon timer; if the process is still alive when it fires,
it writes the name and stack of every live non-daemon thread to stderr and ends the process with
``os._exit(code)``.
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
from collections.abc import Callable, Mapping
from types import FrameType
from typing import TextIO

DEFAULT_TIMEOUT_S = 60.0


def blocking_threads(threads: list[threading.Thread] | None = None) -> list[threading.Thread]:
    """Live non-daemon threads other than the main thread: the ones interpreter exit waits for."""
    threads = threading.enumerate() if threads is None else threads
    main = threading.main_thread()
    return [t for t in threads if t.is_alive() and not t.daemon and t is not main]


def format_threads(threads: list[threading.Thread], frames: Mapping[int, FrameType] | None = None) -> str:
    """A report naming each thread and showing where it is stuck (its current stack when known)."""
    frames = sys._current_frames() if frames is None else frames  # noqa: SLF001 - stdlib debugging API
    if not threads:
        return "no live non-daemon threads\n"
    lines = [f"{len(threads)} live non-daemon thread(s) keep the process from exiting:"]
    for t in threads:
        lines.append(f"--- thread {t.name!r} (ident {t.ident}, daemon={t.daemon})")
        frame = frames.get(t.ident) if t.ident is not None else None
        if frame is None:
            lines.append("    (no stack available)")
        else:
            lines.extend("    " + ln for ln in "".join(traceback.format_stack(frame)).rstrip().splitlines())
    return "\n".join(lines) + "\n"


def arm(
    timeout_s: float = DEFAULT_TIMEOUT_S,
    *,
    stream: TextIO | None = None,
    exit_fn: Callable[[int], object] = os._exit,  # noqa: SLF001 - only a hard exit beats a stuck join
    code: int = 1,
) -> threading.Timer:
    """Start a daemon timer that reports the blocking threads and exits with ``code`` after ``timeout_s``."""

    def fire() -> None:
        out = stream if stream is not None else sys.stderr
        out.write(
            f"\nexit watchdog: process still alive {timeout_s:.0f} s after it finished; "
            f"{format_threads(blocking_threads())}"
        )
        out.flush()
        exit_fn(code)

    timer = threading.Timer(timeout_s, fire)
    timer.name = "exit-watchdog"
    timer.daemon = True
    timer.start()
    return timer
