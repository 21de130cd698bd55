"""The ServerApp's own record of how its run ended: ``<out_dir>/run-status.json``.

Why: ``flwr run`` exits 0 even when the ServerApp raises (Flower logs "Exit Code: 700" and the
traceback in the run's log), and on resume a ``metrics.json`` from the previous run is already
there, so neither the exit status nor the presence of results says whether *this* run did what it
was asked. The ServerApp writes this small record when it starts (``running``), when it finishes
(``completed``, with the rounds it reached) and when it fails (``failed``, with the exception), each
time stamped with the run's start time; a caller removes any old record before starting Flower and
only trusts a record that started after that, so an old run's record can never pass for a new one.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RUN_STATUS_NAME = "run-status.json"
RUNNING, COMPLETED, FAILED = "running", "completed", "failed"


@dataclass(frozen=True)
class RunStatus:
    """One run's outcome as the ServerApp saw it."""

    status: str  # running, completed or failed
    started: float  # unix time at which this ServerApp started
    pid: int = 0
    error: str = ""  # "ExceptionType: message" when failed
    completed_rounds: int = 0
    target_rounds: int = 0  # the rounds asked for (rounds, or stop_after when smaller)
    stopped_reason: str = ""  # a stop the settings asked for (DP budget, target loss)
    updated: float = 0.0

    def ended(self, status: str, **fields: Any) -> RunStatus:
        return RunStatus(**{**asdict(self), "status": status, **fields})


def status_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / RUN_STATUS_NAME


def write_run_status(out_dir: str | Path, status: RunStatus) -> None:
    """Write the record atomically (a reader never sees half a file)."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    record = {**asdict(status), "updated": time.time()}
    fd, tmp = tempfile.mkstemp(prefix=".run-status-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh, indent=1)
        os.replace(tmp, status_path(folder))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_run_status(out_dir: str | Path, not_before: float = 0.0) -> RunStatus | None:
    """The record in ``out_dir`` if it belongs to a run started at or after ``not_before`` (else None)."""
    path = status_path(out_dir)
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    known = set(RunStatus.__dataclass_fields__)
    try:
        status = RunStatus(**{k: v for k, v in raw.items() if k in known})
    except TypeError:
        return None
    return status if status.started >= not_before else None


def clear_run_status(out_dir: str | Path) -> None:
    status_path(out_dir).unlink(missing_ok=True)
