"""Bookkeeping of a lockstep batch: one :class:`Row` per answer, its :class:`RunStats`, parallel calls."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from fedcogen.client.cogen.cloud_client import CloudClient, CloudUnavailable, DecodeSession
from fedcogen.client.cogen.private_spans import PrivateSpanGuard

log = logging.getLogger(__name__)

MAX_RECONNECTS = 8  # per answer: a cloud that keeps dropping a session that answers in between


@dataclass
class Row:
    """One answer in a lockstep batch."""

    instruction: str
    context: str
    run: RunStats
    prompt: list[int] = field(default_factory=list)
    cloud_text: str = ""  # what the cloud's Decode stream is conditioned on (the bare instruction, or for the
    # upper bound instruction + context)
    client: CloudClient | None = None
    mark: tuple[int, int, int] = (0, 0, 0)  # capture records, sent, received bytes at the start
    session: DecodeSession | None = None
    generated: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)  # committed but not yet sent (gated catch-up)
    reconnected: bool = False  # a reconnect happened and the cloud has not answered since
    reconnects: int = 0
    guard: PrivateSpanGuard | None = None  # private-span protection (logit/gated)
    done: bool = False
    device_tail: bool = False
    finished_at: float = 0.0

    def may_reconnect(self) -> bool:
        """One reconnect per failure, and again after the cloud answered in between (a session the cloud
        reaped while the device decoded alone is not a dead cloud), at most ``MAX_RECONNECTS`` per answer."""
        return not self.reconnected and self.reconnects < MAX_RECONNECTS

    def mark_reconnect(self) -> None:
        self.reconnected = True
        self.reconnects += 1

    def finish(self, device_tail: bool = False) -> None:
        self.done, self.device_tail, self.finished_at = True, device_tail, time.perf_counter()


T = TypeVar("T")


def answer_or_fall_back(row: Row, first: Callable[[], T], again: Callable[[], T]) -> T | None:
    """The cloud's answer: ``first()``, or after a :class:`CloudUnavailable` ``again()`` (reconnect and
    replay) where :meth:`Row.may_reconnect` allows; otherwise the row falls back to device-only (None)."""
    for attempt in (1, 2):
        try:
            out = first() if attempt == 1 else again()
            row.reconnected = False  # answered again: a later failure (an idle reap) may reconnect again
            return out
        except CloudUnavailable as exc:
            if attempt == 1 and row.may_reconnect():
                continue
            row.session.cancel()
            row.run.fall_back(f"cloud unavailable ({exc}); continuing device-only for the rest")
    return None


def in_parallel(fn: Callable[[Row], None], rows: Sequence[Row]) -> None:
    """Run one blocking cloud call per row concurrently (the cloud serves them in parallel)."""
    if len(rows) == 1:
        fn(rows[0])
        return
    with ThreadPoolExecutor(max_workers=min(8, len(rows)), thread_name_prefix="cogen-call") as pool:
        list(pool.map(fn, rows))


@dataclass
class RunStats:
    """What one answer cost so far (cloud calls, decoded positions) and whether it fell back to device-only."""

    variant: str
    calls: int = 0  # positions whose token used the cloud's distribution
    positions: int = 0
    round_trips: int = 0  # requests that waited for a cloud answer (speculative: one per round)
    fell_back: bool = False
    warnings: list[str] = field(default_factory=list)
    sketch: str | None = None
    # draft_edit: the cloud's draft (tokens, stop excluded), how many of them the answer kept, how many tokens
    # the device wrote itself, and the device forwards after the prefill (draft_edit and the device-only variants)
    draft_tokens: int = 0
    draft_accepted: int = 0
    device_written: int = 0
    device_passes: int = 0
    device_fed: int = 0  # tokens those forwards appended (draft_edit: the written token + the scored draft block)

    def fall_back(self, message: str) -> None:
        log.warning(message)
        self.warnings.append(message)
        self.fell_back = True
