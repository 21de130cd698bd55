"""The cloud's scheduler: one worker thread runs every model forward (Decode steps, prefills, Sketch).

Why a separate module: the scheduler owns two lifecycles that must never race, and keeping them here
makes the rules easy to audit:

* **Work lifecycle.** Every submitted :class:`Work` ends with ``done`` set, either with logits or
  with an error: a step submitted after :meth:`DynamicBatcher.stop` is refused at once
  (:class:`BatcherStopped`), and ``stop`` fails every step still queued or in flight. A handler
  thread waiting on ``done`` therefore never waits for a batcher that is gone (an unbounded wait
  there kept a gRPC worker, and with it the interpreter, alive forever).
* **KV-cache lifecycle.** A session's cache (:class:`~fedcogen.server.cogen.kv_slots.SessionKV`: buffers
  that grow in place) is written by the scheduler while one of its steps is in a forward. Whoever
  ends a session (the idle reaper, the Decode handler) calls :meth:`Session.release`: the cache is
  freed now if no forward of the session is running, otherwise right after it.

Scheduling (continuous batching with chunked prefill): every tick packs the tokens of all ready work
items into ONE forward (``kv_slots.packed_forward``): every session's decode step or draft in full,
plus at most ``prefill_chunk`` tokens of long work (a prompt prefill, a long catch-up, a Sketch's
prompt). A 4,000-token prompt therefore costs other sessions at most one chunk of delay per step
instead of the whole prefill. A Sketch is a generation work item: it re-enters every tick with the
token it just chose, sharing forwards with the Decode sessions.
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
from fedcogen.server.cogen.kv_slots import SessionKV, install, packed_forward

log = logging.getLogger(__name__)


class BatcherStopped(RuntimeError):
    """The batcher was stopped (cloud shutting down) before the step could run."""


class SessionClosed(RuntimeError):
    """The session was closed (idle reaper, stream ended) before its step could run."""


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
    kv: SessionKV | None = None
    seq: list[int] = field(default_factory=list)  # token sequence (kept by the engine backend only)
    last_active: float = field(default_factory=time.monotonic)
    context: Any = None
    expired: bool = False
    closed: bool = False
    in_flight: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def release(self) -> None:
        """End the session: free its KV cache now, or let the scheduler free it after a running forward."""
        with self.lock:
            self.closed = True
            if not self.in_flight:
                self.kv = None

    @property
    def length(self) -> int:
        return self.kv.length if self.kv is not None else 0

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
class Work:
    """One request to the scheduler (a Decode step, a scored draft, a prefill, a Sketch's generation): the
    servicer and the engine backend create and wait on it, the scheduler fills ``logits`` or ``error``."""

    session: Session
    ids: list[int]
    context: Any
    rewind: int = 0  # tokens to drop from the end of the session's sequence first (rejected draft)
    score: int = 1  # distributions wanted: after each of the last ``score`` ids (logits is [score, V] if > 1)
    generate: tuple[int, frozenset[int]] | None = None  # Sketch: (max new tokens, stop ids); result in ``tokens``
    done: threading.Event = field(default_factory=threading.Event)
    logits: torch.Tensor | None = None
    tokens: list[int] = field(default_factory=list)
    error: BaseException | None = None
    abandoned: bool = False  # the waiting handler gave up (timeout); skip it if not started
    fed: int = 0  # ids already in the cache (a long prefill goes in chunks)

    def caller_gone(self) -> bool:
        """The waiting handler gave up or its RPC ended: the step must not run (every backend checks this)."""
        return self.abandoned or (self.context is not None and not self.context.is_active())

    def fail(self, error: BaseException) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


class DynamicBatcher:
    """Runs every model forward on one worker thread: all ready steps of a tick share one packed forward."""

    def __init__(
        self, model: Any, window_ms: float = 2.0, max_batch: int = 16, expected: Callable[[], int] | None = None,
        prefill_chunk: int = 64,
    ) -> None:
        self.model = model
        if hasattr(model, "set_attn_implementation"):
            install(model)  # per-session in-place KV buffers, one packed forward per tick (kv_slots.py)
        # How many sessions could still join this batch; once they all have, waiting longer is pure latency.
        self.expected = expected or (lambda: max_batch)
        self.window_s = window_ms / 1000.0
        self.max_batch = max_batch
        self.prefill_chunk = max(1, prefill_chunk)
        self._queue: queue.Queue[Work | None] = queue.Queue()
        self._lock = threading.Lock()
        self._stopped = False
        self._running: list[Work] = []
        self._carry: list[Work] = []  # works that continue next tick (prefill chunks, Sketch tokens)
        self._thread = threading.Thread(target=self._loop, name="cogen-batcher", daemon=True)
        self.batches = 0  # forwards that served more than one session
        self.batched_rows = 0
        self.ticks = 0
        self._last_forward_s = 0.0
        self._thread.start()

    @property
    def stopped(self) -> bool:
        return self._stopped

    def submit(self, work: Work) -> None:
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
            running = list(self._running) + list(self._carry)
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

    def _collect(self) -> list[Work] | None:
        """The works of the next tick (None: stop). Waits for the first only when nothing is carried over."""
        pending = list(self._carry)
        self._carry = []
        if not pending:
            first = self._queue.get()
            if first is None:
                return None
            pending = [first]
            want = min(self.max_batch, max(1, self.expected()))
            # Other sessions' next steps trail the replies of the last tick by their client-side work; waiting
            # up to half a forward for them costs less than running them in a forward of their own.
            window = max(self.window_s, min(0.05, 0.5 * self._last_forward_s)) if want > 1 else self.window_s
            deadline = time.monotonic() + window
            while len(pending) < want:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
                if item is None:
                    return None
                pending.append(item)
        while True:  # whatever else is queued joins now
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return pending
            if item is None:
                return None
            pending.append(item)

    def _loop(self) -> None:
        while True:
            pending = self._collect()
            if pending is None or self._stopped:
                for w in pending or []:
                    w.fail(BatcherStopped("cloud shut down before the step ran"))
                return
            self._run(pending)

    def _claim(self, pending: list[Work]) -> list[Work]:
        """Keep the steps that can still run and mark their sessions busy (so release defers the free)."""
        live = []
        for w in pending:
            if w.caller_gone():
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

    def _plan(self, live: list[Work]) -> tuple[list[tuple[Work, list[int], int]], list[Work]]:
        """This tick's pieces ``(work, tokens, n_logits)`` and the works that wait for the next tick:
        one piece per session, short works whole, at most ``prefill_chunk`` tokens of long work."""
        pieces, later, seen, long_budget = [], [], set(), self.prefill_chunk
        for w in live:
            if id(w.session) in seen:
                later.append(w)  # a session's next step waits for its previous one
                continue
            left = w.ids[w.fed:]
            if len(left) > self.prefill_chunk:
                if long_budget <= 0:
                    later.append(w)
                    continue
                take = min(long_budget, len(left) - max(1, w.score))  # the last piece holds the scored tokens
                if take <= 0:
                    take = len(left)
                long_budget -= take
            else:
                take = len(left)
            seen.add(id(w.session))
            final = w.fed + take == len(w.ids)
            pieces.append((w, left[:take], (w.score if w.generate is None else 1) if final else 0))
        return pieces, later

    def _run(self, pending: list[Work]) -> None:
        live = self._claim(pending)
        with self._lock:
            self._running = live
        try:
            pieces, later = self._plan(live)
            with torch.inference_mode():
                for w, _, _ in pieces:
                    if w.fed == 0 and w.rewind:
                        if w.session.kv is None or w.rewind > w.session.length:
                            raise ValueError(f"cannot rewind {w.rewind} tokens of a {w.session.length}-token sequence")
                        w.session.kv.rewind(w.rewind)
                        w.rewind = 0
                    if w.session.kv is None:
                        w.session.kv = SessionKV.for_model(self.model)
                t0 = time.monotonic()
                results = packed_forward(self.model, [(w.session.kv, toks, n) for w, toks, n in pieces]) if pieces else []
                self._last_forward_s = time.monotonic() - t0
            self.ticks += 1
            if len(pieces) > 1:
                self.batches += 1
                self.batched_rows += len(pieces)
            for (w, toks, n), logits in zip(pieces, results, strict=True):
                w.fed += len(toks)
                if w.fed < len(w.ids):
                    later.append(w)  # next chunk next tick
                elif w.generate is not None:
                    self._generated(w, logits[-1], later)
                else:
                    w.logits = (logits[0] if n == 1 else logits).clone()
                    w.done.set()
        except Exception as exc:  # surface model errors to the callers, keep the thread alive
            log.exception("batched forward failed")
            for w in live:
                w.fail(exc)
            later = []
        finally:
            with self._lock:
                self._running = []
            for w in live:  # between ticks: free caches of sessions closed meanwhile
                with w.session.lock:
                    w.session.in_flight = False
                    if w.session.closed:
                        w.session.kv = None
        self._carry = [w for w in later if not w.done.is_set()]

    @staticmethod
    def _generated(w: Work, logits: torch.Tensor, later: list[Work]) -> None:
        """A Sketch step: greedy token; the work re-enters next tick with it, or ends."""
        limit, stop = w.generate
        tok = int(logits.argmax())
        if tok in stop or len(w.tokens) >= limit:
            w.done.set()
            return
        w.tokens.append(tok)
        if len(w.tokens) >= limit:
            w.done.set()
            return
        w.ids, w.fed = [tok], 0
        later.append(w)
