"""Session-wide test setup: an exit watchdog so a run that passes but cannot exit fails loudly.

A thread left blocked by some test (a gRPC handler, a request pump) used to make CI print
"N passed" and hang for good. After the last test we arm a daemon timer: if the interpreter has
not exited within ``FEDCOGEN_EXIT_WATCHDOG_S`` seconds (default 60; 0 disables), it prints the
names and stacks of the live non-daemon threads to stderr and exits with status 1.
"""

from __future__ import annotations

import os

import pytest

from fedcogen import exit_watchdog


def pytest_unconfigure(config: pytest.Config) -> None:
    timeout_s = float(os.environ.get("FEDCOGEN_EXIT_WATCHDOG_S", exit_watchdog.DEFAULT_TIMEOUT_S))
    if timeout_s > 0 and not hasattr(config, "workerinput"):  # once per run, not per xdist worker
        exit_watchdog.arm(timeout_s)
