"""The cloud's servicer: Sketch, Decode (bidirectional stream) and the guarded EvalOnlyGenerate.

Every request is checked (protocol version, malformed bytes, token ids inside the vocabulary, size
limits) and every failure is answered with a gRPC status that says what was wrong. Decode steps go
through the :class:`~fedcogen.server.cogen.cloud_batcher.DynamicBatcher`; sessions idle for too long are
reaped so their KV caches are freed.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import torch
from google.protobuf.message import DecodeError

from fedcogen.models import LoadedModel, chat_input_ids, stop_token_ids
from fedcogen.prompts import CLOUD_SYSTEM, SKETCH_SYSTEM, cloud_prompt, sketch_request
from fedcogen.protocols import cogen_pb2 as pb
from fedcogen.protocols.codecs import logit_codec
from fedcogen.server.cogen.cloud_batcher import BatcherStopped, DynamicBatcher, Session, SessionClosed, Work
from fedcogen.server.cogen.cloud_config import CloudConfig
from fedcogen.server.cogen.engine_backend import EngineBackend, EngineClient, EngineConfig

log = logging.getLogger(__name__)


class _Malformed:
    """Stand-in for a request whose bytes are not a valid protobuf (answered with INVALID_ARGUMENT)."""

    def __init__(self, size: int, error: str) -> None:
        self.size, self.error = size, error

    def ByteSize(self) -> int:  # noqa: N802 - protobuf naming
        return self.size


def request_parser(cls: type) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        msg = cls()
        try:
            msg.ParseFromString(data)
        except DecodeError as exc:
            return _Malformed(len(data), str(exc))
        return msg

    return parse


def serialize(msg: Any) -> bytes:
    return msg.SerializeToString()


class CloudLMService:
    """The servicer: Sketch, Decode (bidirectional stream) and the guarded EvalOnlyGenerate."""

    def __init__(self, config: CloudConfig, lm: LoadedModel) -> None:
        self.config = config
        self.lm = lm
        self.vocab = lm.vocab_size
        self.stop_ids = stop_token_ids(lm.tokenizer)
        self.fingerprint = logit_codec.tokenizer_fingerprint(lm.tokenizer)
        self.sessions: dict[str, Session] = {}
        self.batcher: DynamicBatcher | EngineBackend
        if config.engine_url:
            engine = EngineConfig(config.engine_url, config.engine_model, config.engine_api_key,
                                  config.engine_timeout_s, config.engine_max_logprobs, config.workers,
                                  flavour=config.engine_flavour, echo=config.engine_echo)
            self.batcher = EngineBackend(EngineClient(engine, lm.tokenizer, self.vocab), config.workers)
        else:
            self.batcher = DynamicBatcher(
                lm.model, config.batch_window_ms, config.max_batch, expected=lambda: len(self.sessions),
                prefill_chunk=config.prefill_chunk,
            )
        self._lock = threading.Lock()
        self._accepting = True
        self._reaper_stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap_loop, name="cogen-reaper", daemon=True)
        self._reaper.start()
        self.total_bytes_in = 0
        self.total_bytes_out = 0
        self.sessions_served = 0
        self._ids = itertools.count(1)

    # ----------------------------------------------------------------- helpers
    @property
    def reply_limit(self) -> int:
        """The largest reply the server sends (``start_cloud_server`` sets the same gRPC option)."""
        return max(self.config.max_message_bytes, self.vocab * 9 + 1024)

    def _packet_bound(self, session: Session) -> int:
        if session.encoding == pb.FULL_FP32:
            return 4 * self.vocab + 16
        return 9 * min(session.k, self.vocab) + 32  # varint id + value, plus fixed fields

    def _check_version(self, version: int, context: grpc.ServicerContext) -> None:
        if version != logit_codec.PROTOCOL_VERSION:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"protocol version mismatch: device speaks v{version}, "
                f"cloud speaks v{logit_codec.PROTOCOL_VERSION}; upgrade the older side",
            )

    def _check_malformed(self, request: Any, context: grpc.ServicerContext) -> None:
        if isinstance(request, _Malformed):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request ({request.size} bytes): {request.error}")

    def _check_ids(self, ids: Any, context: grpc.ServicerContext, what: str) -> list[int]:
        ids = list(ids)
        bad = [i for i in ids if i >= self.vocab]
        if bad:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"{what} contains token id {bad[0]} outside vocabulary of {self.vocab}"
            )
        return ids

    def _generate(self, ids: list[int], max_new_tokens: int, context: grpc.ServicerContext) -> list[int]:
        """Greedy generation through the scheduler (shares forwards with the Decode sessions)."""
        session = Session(f"gen-{next(self._ids)}", k=1, encoding=pb.FP16, max_tokens=max_new_tokens)
        work = Work(session, ids, context, generate=(max_new_tokens, frozenset(self.stop_ids)))
        try:
            if max_new_tokens > 0:
                self._wait(work, context)
        finally:
            session.release()
        return list(work.tokens)

    def _wait(self, work: Work, context: grpc.ServicerContext) -> torch.Tensor | None:
        """Run one step through the batcher; every outcome, including none in time, is a gRPC status."""
        self.batcher.submit(work)
        remaining = context.time_remaining()
        # No client deadline shows up as None or a huge number: the server-side step bound applies.
        client_bound = remaining is not None and remaining < self.config.step_timeout_s
        timeout = max(0.0, remaining) if client_bound else self.config.step_timeout_s
        if not work.done.wait(timeout):
            work.abandoned = True  # the batcher skips it if it has not started yet
            if client_bound:
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed while the step was queued")
            context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"step did not run within the cloud's step timeout ({self.config.step_timeout_s:.0f} s)",
            )
        if work.error is not None:
            if isinstance(work.error, BatcherStopped):
                context.abort(grpc.StatusCode.UNAVAILABLE, str(work.error))
            if isinstance(work.error, SessionClosed):
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"{work.error} (idle timeout)")
            if isinstance(work.error, TimeoutError):
                context.abort(grpc.StatusCode.CANCELLED, str(work.error))
            context.abort(grpc.StatusCode.INTERNAL, f"model forward failed: {work.error}")
        assert work.logits is not None or work.generate is not None
        return work.logits

    def _reap_loop(self) -> None:
        interval = max(0.05, min(1.0, self.config.idle_timeout_s / 4))
        while not self._reaper_stop.wait(interval):
            now = time.monotonic()
            with self._lock:
                idle = [s for s in self.sessions.values() if now - s.last_active > self.config.idle_timeout_s]
            for s in idle:
                log.info("reaping idle session %s (idle > %.1f s)", s.session_id, self.config.idle_timeout_s)
                s.expired = True
                s.release()  # frees the KV cache now, or after the batcher's running forward
                with self._lock:
                    self.sessions.pop(s.session_id, None)
                if s.context is not None:
                    s.context.cancel()

    def active_sessions(self) -> int:
        with self._lock:
            return len(self.sessions)

    # ----------------------------------------------------------------- RPCs
    def Sketch(self, request: Any, context: grpc.ServicerContext) -> pb.SketchReply:  # noqa: N802
        self._check_malformed(request, context)
        self._check_version(request.protocol_version, context)
        if not request.instruction.strip():
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Sketch needs a non-empty instruction")
        ids = chat_input_ids(self.lm.tokenizer, sketch_request(request.instruction), system=SKETCH_SYSTEM)
        if len(ids) > self.config.max_prompt_tokens:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"instruction is {len(ids)} tokens, limit is {self.config.max_prompt_tokens}",
            )
        limit = self.config.sketch_max_new_tokens
        n = min(request.max_new_tokens or limit, limit)
        out = self._generate(ids, n, context)
        text = self.lm.tokenizer.decode(out, skip_special_tokens=True).strip()
        self.total_bytes_in += request.ByteSize()
        reply = pb.SketchReply(sketch=text, prompt_tokens=len(ids), generated_tokens=len(out))
        self.total_bytes_out += reply.ByteSize()
        return reply

    def EvalOnlyGenerate(self, request: Any, context: grpc.ServicerContext) -> pb.EvalOnlyGenerateReply:  # noqa: N802
        self._check_malformed(request, context)
        if not self.config.allow_eval_only_context:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "EvalOnlyGenerate takes a full prompt that may contain private context; this cloud was not "
                "started with --allow-eval-only-context (evaluation only, never in production)",
            )
        self._check_version(request.protocol_version, context)
        ids = chat_input_ids(self.lm.tokenizer, request.full_prompt, system=CLOUD_SYSTEM)
        if len(ids) > self.config.max_prompt_tokens:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"prompt is {len(ids)} tokens, limit {self.config.max_prompt_tokens}")
        limit = self.config.eval_max_new_tokens
        out = self._generate(ids, min(request.max_new_tokens or limit, limit), context)
        return pb.EvalOnlyGenerateReply(text=self.lm.tokenizer.decode(out, skip_special_tokens=True), token_ids=out)

    def _open(self, msg: Any, context: grpc.ServicerContext) -> tuple[Session, list[int]]:
        self._check_version(msg.protocol_version, context)
        if msg.instruction_ids and msg.instruction:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "send either instruction text or instruction_ids, not both")
        if msg.instruction_ids:
            ids = self._check_ids(msg.instruction_ids, context, "instruction_ids")
        elif msg.instruction.strip():
            ids = chat_input_ids(self.lm.tokenizer, cloud_prompt(msg.instruction), system=CLOUD_SYSTEM)
        else:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "session open needs an instruction or instruction_ids")
        if len(ids) > self.config.max_prompt_tokens:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"prompt is {len(ids)} tokens, limit is {self.config.max_prompt_tokens}",
            )
        encoding = msg.encoding or pb.FP16
        try:
            logit_codec.encoding_name(encoding)
        except logit_codec.CodecError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if encoding == pb.PACKED8 and self.vocab > logit_codec.PACKED_MAX_VOCAB:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"packed8 needs a vocabulary of at most {logit_codec.PACKED_MAX_VOCAB}; this cloud has {self.vocab}")
        max_k = self.config.max_k or self.vocab
        if encoding != pb.FULL_FP32 and not 1 <= msg.k <= max_k:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"k must be in [1, {max_k}], got {msg.k}")
        max_tokens = self.config.max_tokens_per_session
        if msg.max_tokens:
            max_tokens = min(max_tokens, msg.max_tokens)
        with self._lock:
            if not self._accepting:
                context.abort(grpc.StatusCode.UNAVAILABLE, "cloud is shutting down")
            if len(self.sessions) >= self.config.max_sessions:
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"cloud is at its session limit ({self.config.max_sessions}); retry later",
                )
            sid = f"s{next(self._ids)}-{uuid.uuid4().hex[:8]}"
            session = Session(sid, k=msg.k, encoding=encoding, max_tokens=max_tokens, context=context)
            self.sessions[sid] = session
        session.prompt_tokens = len(ids)
        return session, ids

    def Decode(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Iterator[pb.DecodeReply]:  # noqa: N802
        session: Session | None = None
        try:
            for request in request_iterator:
                self._check_malformed(request, context)
                if session is not None:
                    if session.expired:
                        context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "session reaped after idle timeout")
                    session.last_active = time.monotonic()
                    session.bytes_in += request.ByteSize()
                kind = request.WhichOneof("kind")
                rewind, score, silent = 0, 1, False
                if kind == "open":
                    if session is not None:
                        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "session already open on this stream")
                    session, ids = self._open(request.open, context)
                    session.bytes_in += request.ByteSize()
                elif kind == "step":
                    if session is None:
                        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "first message must open the session")
                    step = request.step
                    ids = self._check_ids(step.token_ids, context, "step")
                    if not ids:
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "step carries no token ids")
                    if step.rewind > session.generated:
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                      f"step rewinds {step.rewind} tokens, the session has {session.generated}")
                    if step.score > len(ids):
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                      f"step scores {step.score} positions but carries {len(ids)} tokens")
                    rewind, score, silent = step.rewind, max(1, step.score), step.silent
                    if score > 1 and score * self._packet_bound(session) > self.reply_limit:
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                      f"a block of {score} distributions would exceed the {self.reply_limit}-byte "
                                      "reply limit; score fewer positions (or use a smaller k)")
                    session.generated -= rewind
                    if session.generated + len(ids) > session.max_tokens:
                        context.abort(
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"session exceeds its limit of {session.max_tokens} generated tokens",
                        )
                    session.generated += len(ids)
                elif kind == "close":
                    if session is None:
                        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "close without an open session")
                    reply = pb.DecodeReply(closed=session.stats(), session_id=session.session_id)
                    session.bytes_out += reply.ByteSize()
                    yield reply
                    return
                else:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty DecodeRequest (no open/step/close)")
                logits = self._wait(Work(session, ids, context, rewind, score), context)
                session.steps += 1
                if silent:
                    session.last_active = time.monotonic()
                    continue
                if score > 1:
                    block = logit_codec.encode_block(logits, session.k, session.encoding,
                                                     position=session.generated - score + 1)
                    reply = pb.DecodeReply(block=block, session_id=session.session_id)
                else:
                    packet = logit_codec.encode(logits, session.k, session.encoding, position=session.generated)
                    reply = pb.DecodeReply(logits=packet, session_id=session.session_id)
                if kind == "open":
                    reply.tokenizer_fingerprint = self.fingerprint
                session.bytes_out += reply.ByteSize()
                session.last_active = time.monotonic()
                yield reply
        finally:
            if session is not None:
                with self._lock:
                    self.sessions.pop(session.session_id, None)
                    self.total_bytes_in += session.bytes_in
                    self.total_bytes_out += session.bytes_out
                    self.sessions_served += 1
                session.release()
                log.debug(
                    "session %s ended: prompt=%d generated=%d steps=%d bytes in=%d out=%d",
                    session.session_id, session.prompt_tokens, session.generated, session.steps,
                    session.bytes_in, session.bytes_out,
                )

    # ----------------------------------------------------------------- lifecycle
    def stop_accepting(self) -> None:
        with self._lock:
            self._accepting = False

    def shutdown(self) -> None:
        """Refuse new sessions and fail every queued or running step (UNAVAILABLE) instead of leaving it waiting."""
        self.stop_accepting()
        self._reaper_stop.set()
        self.batcher.stop()
