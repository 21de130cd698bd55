"""The cloud's dynamic batcher: one worker thread runs every model forward of the Decode sessions.

Why a separate module: the batcher owns two lifecycles that must never race, and keeping them here
makes the rules easy to audit:

* **Work lifecycle.** Every submitted :class:`_Work` ends with ``done`` set, either with logits or
  with an error: a step submitted after :meth:`DynamicBatcher.stop` is refused at once
  (:class:`BatcherStopped`), and ``stop`` fails every step still queued or in flight. A handler
  thread waiting on ``done`` therefore never waits for a batcher that is gone (an unbounded wait
  there kept a gRPC worker, and with it the interpreter, alive forever).
* **KV-cache lifecycle.** A session's cache is read and replaced by the batcher while one of its
  steps is in flight. Whoever ends a session (the idle reaper, the Decode handler) calls
  :meth:`Session.release`: the cache is freed now if no step of the session is running, otherwise
  by the batcher right after the forward. Nobody else sets ``kv`` to None, so a batch never sees a
  cache vanish under it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from fedcogen.protocols import cogen_pb2 as pb

log = logging.getLogger(__name__)


class BatcherStopped(RuntimeError):
    """The batcher was stopped (cloud shutting down) before the step could run."""


class SessionClosed(RuntimeError):
    """The session was closed (idle reaper, stream ended) before its step could run."""


@dataclass
class _Cohort:
    """Sessions that stepped together last time, and their batched (left-padded) KV cache.

    Why: in lockstep decoding (every session of a device batch steps at once) the same sessions form
    every batch. Re-padding, concatenating and cutting every session's cache at every step costs more
    than the forward itself on a CPU; a cohort that steps again with the same members reuses the
    batched cache as it is and only appends a mask column.
    """

    sessions: list[Any]
    cache: Any  # transformers DynamicCache, [B, heads, cols, dim] per layer
    mask: torch.Tensor  # [B, cols]: 1 where a row has a real token


@dataclass
class Session:
    """One Decode stream's state on the cloud."""

    session_id: str
    k: int
    encoding: int
    max_tokens: int
    prompt_tokens: int = 0
    generated: int = 0
    steps: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    cohort: _Cohort | None = None  # while set, the KV cache is row ``row`` of the cohort's batched cache
    row: int = 0
    length: int = 0
    last_active: float = field(default_factory=time.monotonic)
    context: Any = None
    expired: bool = False
    closed: bool = False
    in_flight: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def release(self) -> None:
        """End the session: free its KV cache now, or let the batcher free it after a running step."""
        with self.lock:
            self.closed = True
            if not self.in_flight:
                self.kv, self.cohort = None, None

    def has_kv(self) -> bool:
        return self.kv is not None or self.cohort is not None

    def take_kv(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """This session's own KV cache, cut out of its cohort's batched cache if it was in one."""
        c = self.cohort
        if c is not None:
            start = c.mask.shape[1] - self.length
            self.kv = [(layer.keys[self.row:self.row + 1, :, start:].clone(),
                        layer.values[self.row:self.row + 1, :, start:].clone()) for layer in c.cache.layers]
            self.cohort = None
        return self.kv

    def stats(self) -> pb.SessionStats:
        return pb.SessionStats(
            session_id=self.session_id,
            prompt_tokens=self.prompt_tokens,
            generated_tokens=self.generated,
            bytes_received=self.bytes_in,
            bytes_sent=self.bytes_out,
            steps=self.steps,
        )


@dataclass
class _Work:
    session: Session
    ids: list[int]
    context: Any
    rewind: int = 0  # tokens to drop from the end of the session's sequence first (rejected draft)
    score: int = 1  # distributions wanted: after each of the last ``score`` ids (logits is [score, V] if > 1)
    done: threading.Event = field(default_factory=threading.Event)
    logits: torch.Tensor | None = None
    error: BaseException | None = None
    abandoned: bool = False  # the waiting handler gave up (timeout); skip it if not started

    def fail(self, error: BaseException) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


class DynamicBatcher:
    """Runs every model forward of Decode sessions on one worker thread, batching single-token steps."""

    def __init__(
        self, model: Any, window_ms: float = 2.0, max_batch: int = 16, expected: Callable[[], int] | None = None
    ) -> None:
        self.model = model
        # How many sessions could still join this batch; once they all have, waiting longer is pure latency.
        self.expected = expected or (lambda: max_batch)
        self.window_s = window_ms / 1000.0
        self.max_batch = max_batch
        self._queue: queue.Queue[_Work | None] = queue.Queue()
        self._lock = threading.Lock()
        self._stopped = False
        self._running: list[_Work] = []
        self._thread = threading.Thread(target=self._loop, name="cogen-batcher", daemon=True)
        self.batches = 0
        self.batched_rows = 0
        self._thread.start()

    @property
    def stopped(self) -> bool:
        return self._stopped

    def submit(self, work: _Work) -> None:
        """Queue a step; after :meth:`stop` the step is failed at once instead of queued forever."""
        with self._lock:
            if not self._stopped:
                self._queue.put(work)
                return
        work.fail(BatcherStopped("cloud is shutting down; the step was not run"))

    def stop(self, timeout: float = 10.0) -> None:
        """Refuse new steps, fail every queued one, let a running forward end (bounded), fail the rest."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._queue.put(None)
        self._thread.join(timeout=timeout)
        error = BatcherStopped("cloud shut down before the step ran")
        self._drain(error)
        with self._lock:
            running = list(self._running)
        for w in running:  # only non-empty when the forward outlived ``timeout``
            w.fail(error)

    def _drain(self, error: BaseException) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item.fail(error)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None or self._stopped:
                if first is not None:
                    first.fail(BatcherStopped("cloud shut down before the step ran"))
                return
            pending = [first]
            deadline = time.monotonic() + self.window_s
            while len(pending) < min(self.max_batch, max(1, self.expected())):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
                if item is None:
                    break
                pending.append(item)
            if self._stopped:
                for w in pending:
                    w.fail(BatcherStopped("cloud shut down before the step ran"))
                return
            self._run(pending)

    def _claim(self, pending: list[_Work]) -> list[_Work]:
        """Keep the steps that can still run and mark their sessions busy (so release defers the free)."""
        live = []
        for w in pending:
            if w.abandoned or (w.context is not None and not w.context.is_active()):
                w.fail(TimeoutError("caller went away before the step ran"))
                continue
            with w.session.lock:
                if w.session.closed:
                    closed = True
                else:
                    closed = False
                    w.session.in_flight = True
            if closed:
                w.fail(SessionClosed("session was closed before the step ran"))
            else:
                live.append(w)
        return live

    def _run(self, pending: list[_Work]) -> None:
        live = self._claim(pending)
        with self._lock:
            self._running = live
        singles = [w for w in live if len(w.ids) == 1 and w.session.has_kv() and w.rewind == 0 and w.score == 1]
        others = [w for w in live if w not in singles]
        try:
            with torch.inference_mode():
                for w in others:
                    self._forward_one(w)
                if len(singles) == 1:
                    self._forward_one(singles[0])
                elif singles:
                    self._forward_batch(singles)
        except Exception as exc:  # surface model errors to the callers, keep the thread alive
            log.exception("batched forward failed")
            for w in live:
                w.fail(exc)
        finally:
            with self._lock:
                self._running = []
            for w in live:  # between batches: free caches of sessions closed meanwhile
                with w.session.lock:
                    w.session.in_flight = False
                    if w.session.closed:
                        w.session.kv, w.session.cohort = None, None

    def _forward_one(self, w: _Work) -> None:
        from transformers import DynamicCache

        s = w.session
        kv = s.take_kv()
        if w.rewind:  # drop the rejected draft tokens (views: no copy)
            if kv is None or w.rewind > s.length:
                raise ValueError(f"cannot rewind {w.rewind} tokens of a {s.length}-token sequence")
            s.length -= w.rewind
            kv = [(k[:, :, :s.length], v[:, :, :s.length]) for k, v in kv]
        cache = DynamicCache(ddp_cache_data=kv) if kv is not None else DynamicCache()
        ids = torch.tensor([w.ids], dtype=torch.long)
        pos = torch.arange(s.length, s.length + len(w.ids)).unsqueeze(0)
        out = self.model(input_ids=ids, past_key_values=cache, position_ids=pos, use_cache=True,
                         logits_to_keep=w.score)
        s.kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        s.length += len(w.ids)
        logits = out.logits[0, -w.score:].float()
        w.logits = (logits[0] if w.score == 1 else logits).clone()
        w.done.set()

    def _forward_batch(self, items: list[_Work]) -> None:
        from transformers import DynamicCache

        sessions = [w.session for w in items]
        lengths = [s.length for s in sessions]
        cohort = sessions[0].cohort
        if cohort is not None and cohort.sessions == sessions and all(s.cohort is cohort for s in sessions):
            cache = cohort.cache  # the same sessions stepped together last time: reuse their batched cache
            mask = torch.cat([cohort.mask, torch.ones(len(items), 1, dtype=torch.long)], dim=1)
        else:
            kvs = [s.take_kv() for s in sessions]
            longest = max(lengths)
            data = []
            for li in range(len(kvs[0])):
                keys, values = [], []
                for kv, length in zip(kvs, lengths, strict=True):
                    k, v = kv[li]
                    pad = longest - length
                    keys.append(torch.nn.functional.pad(k, (0, 0, pad, 0)))
                    values.append(torch.nn.functional.pad(v, (0, 0, pad, 0)))
                data.append((torch.cat(keys), torch.cat(values)))
            cache = DynamicCache(ddp_cache_data=data)
            mask = torch.zeros(len(items), longest + 1, dtype=torch.long)
            for row, length in enumerate(lengths):
                mask[row, longest - length:] = 1
        out = self.model(
            input_ids=torch.tensor([w.ids for w in items], dtype=torch.long),
            past_key_values=cache,
            attention_mask=mask,
            position_ids=torch.tensor([[length] for length in lengths], dtype=torch.long),
            use_cache=True,
        )
        self.batches += 1
        self.batched_rows += len(items)
        new = _Cohort(sessions, out.past_key_values, mask)
        for row, (w, s) in enumerate(zip(items, sessions, strict=True)):
            s.kv, s.cohort, s.row = None, new, row
            s.length += 1
            w.logits = out.logits[row, -1].float().clone()
            w.done.set()
