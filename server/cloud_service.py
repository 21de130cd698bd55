"""The CoGenesis cloud: a gRPC ``CloudLM`` service hosting the large model, with a dynamic batcher.

Why this shape:

* **Per-session KV cache.** A ``Decode`` stream is one generation. The cloud keeps the session's
  key/value cache so each committed token costs one token of compute, not a re-read of the prefix.
* **Dynamic batching.** Concurrent sessions each want "one more token" at about the same time. A
  worker thread collects pending steps for a short window (default 2 ms), left-pads their caches to
  a common length, masks the padding, gives every row its own ``position_ids`` and runs one forward.
  Padding keys are masked out exactly, and keys are stored after RoPE, so a batched row computes
  the same distribution as the session alone (up to float summation order). Multi-token steps
  (the prompt prefill, a gated catch-up) run alone: they are rare and mixing them buys little.
* **Privacy by construction.** The API has no field for private context; ``EvalOnlyGenerate``
  (which does take a full prompt) is refused unless the operator passes ``--allow-eval-only-context``.
* **Hard limits.** Max sessions, max tokens per session, max prompt tokens, max message size, idle
  sessions reaped, client deadlines honoured; every violation is a clean gRPC status with a message.
* **Security.** TLS + ``authorization: Bearer <token>`` checked by a server interceptor
  (UNAUTHENTICATED otherwise); plaintext only when explicitly ``insecure``.
"""

from __future__ import annotations

import hmac
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import torch
from google.protobuf.message import DecodeError

from fedcogen.client.prompts import CLOUD_SYSTEM, SKETCH_SYSTEM, cloud_prompt, sketch_request
from fedcogen.models import LoadedModel, chat_input_ids, load_model
from fedcogen.protocols import cogen_pb2 as pb
from fedcogen.protocols import logit_codec
from fedcogen.server.cloud_batcher import BatcherStopped, DynamicBatcher, Session, SessionClosed, _Work
from fedcogen.server.daemon_pool import DaemonThreadPool

log = logging.getLogger(__name__)

SERVICE_NAME = "fedcogen.cogen.v1.CloudLM"
HEALTH_PREFIX = "/grpc.health.v1.Health/"


@dataclass
class CloudConfig:
    """Everything ``fedcogen cloud serve`` can set; defaults suit a laptop-sized deployment."""

    model: str = "smollm2"
    seed: int = 0
    host: str = "127.0.0.1"
    port: int = 0
    tls_dir: str | None = None
    token: str | None = None
    insecure: bool = False
    require_client_cert: bool = False
    max_sessions: int = 64
    max_tokens_per_session: int = 512
    max_prompt_tokens: int = 4096  # + max_tokens_per_session stays inside SmolLM2's 8192-token window
    max_message_bytes: int = 1 << 20
    max_k: int = 0  # 0 = the whole vocabulary
    idle_timeout_s: float = 60.0
    # Upper bound on how long an RPC handler waits for one Decode step, even when the client set no
    # deadline: a handler must never wait forever (it would pin a worker thread and block exit).
    step_timeout_s: float = 120.0
    batch_window_ms: float = 2.0
    max_batch: int = 16
    sketch_max_new_tokens: int = 96
    eval_max_new_tokens: int = 256
    allow_eval_only_context: bool = False
    workers: int = 32

    def validate(self) -> None:
        if not self.insecure and not self.tls_dir:
            raise ValueError("the cloud needs --tls-dir DIR (with --token-file) or an explicit --insecure")
        if not self.insecure and not self.token:
            raise ValueError(
                "a TLS cloud needs a bearer token (--token-file FILE or $FEDCOGEN_CLOUD_TOKEN) so that callers "
                "can be authenticated"
            )
        if not self.step_timeout_s > 0:
            raise ValueError(f"step_timeout_s must be > 0, got {self.step_timeout_s}")
        if self.max_sessions < 1 or self.max_tokens_per_session < 1 or self.max_batch < 1:
            raise ValueError("max_sessions, max_tokens_per_session and max_batch must be >= 1")
        if self.workers < self.max_sessions + 4:
            # Each open Decode stream occupies one gRPC worker thread for its lifetime.
            self.workers = self.max_sessions + 4


class _Malformed:
    """Stand-in for a request whose bytes are not a valid protobuf (answered with INVALID_ARGUMENT)."""

    def __init__(self, size: int, error: str) -> None:
        self.size, self.error = size, error

    def ByteSize(self) -> int:  # noqa: N802 - protobuf naming
        return self.size


def _parser(cls: type) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        msg = cls()
        try:
            msg.ParseFromString(data)
        except DecodeError as exc:
            return _Malformed(len(data), str(exc))
        return msg

    return parse


def _serialize(msg: Any) -> bytes:
    return msg.SerializeToString()


def greedy_generate(model: Any, prompt_ids: list[int], max_new_tokens: int, stop_ids: set[int]) -> list[int]:
    """Plain greedy decoding with a KV cache (used by Sketch and EvalOnlyGenerate)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    out_ids: list[int] = []
    ids = torch.tensor([prompt_ids], dtype=torch.long)
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            out = model(input_ids=ids, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            nxt = int(out.logits[0, -1].argmax())
            if nxt in stop_ids:
                break
            out_ids.append(nxt)
            ids = torch.tensor([[nxt]], dtype=torch.long)
    return out_ids


def stop_token_ids(tokenizer: Any) -> set[int]:
    """End-of-text ids of a tokenizer (eos plus the chat end-of-turn marker when it exists)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for marker in ("<|im_end|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(marker)
        if isinstance(tid, int) and tid >= 0 and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return ids


class CloudLMService:
    """The servicer: Sketch, Decode (bidirectional stream) and the guarded EvalOnlyGenerate."""

    def __init__(self, config: CloudConfig, lm: LoadedModel) -> None:
        self.config = config
        self.lm = lm
        self.vocab = lm.vocab_size
        self.stop_ids = stop_token_ids(lm.tokenizer)
        self.fingerprint = logit_codec.tokenizer_fingerprint(lm.tokenizer)
        self.sessions: dict[str, Session] = {}
        self.batcher = DynamicBatcher(
            lm.model, config.batch_window_ms, config.max_batch, expected=lambda: len(self.sessions)
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

    def _wait(self, work: _Work, context: grpc.ServicerContext) -> torch.Tensor:
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
        assert work.logits is not None
        return work.logits

    def _reap_loop(self) -> None:
        interval = max(0.05, min(1.0, self.config.idle_timeout_s / 4))
        while not self._reaper_stop.wait(interval):
            now = time.monotonic()
            with self._lock:
                idle = [s for s in self.sessions.values() if now - s.last_active > self.config.idle_timeout_s]
            for s in idle:
                log.warning("reaping idle session %s (idle > %.1f s)", s.session_id, self.config.idle_timeout_s)
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
        out = greedy_generate(self.lm.model, ids, n, self.stop_ids)
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
        out = greedy_generate(self.lm.model, ids, min(request.max_new_tokens or limit, limit), self.stop_ids)
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
                if kind == "open":
                    if session is not None:
                        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "session already open on this stream")
                    session, ids = self._open(request.open, context)
                    session.bytes_in += request.ByteSize()
                elif kind == "step":
                    if session is None:
                        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "first message must open the session")
                    ids = self._check_ids(request.step.token_ids, context, "step")
                    if not ids:
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "step carries no token ids")
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
                logits = self._wait(_Work(session, ids, context), context)
                session.steps += 1
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
                log.info(
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


class _AuthInterceptor(grpc.ServerInterceptor):
    """Refuses calls without ``authorization: Bearer <token>`` (health checks stay open for probes)."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details):  # noqa: ANN001
        if handler_call_details.method.startswith(HEALTH_PREFIX):
            return continuation(handler_call_details)
        got = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        got_b = got.encode() if isinstance(got, str) else bytes(got)
        if hmac.compare_digest(got_b, self._expected):
            return continuation(handler_call_details)
        reason = "missing authorization metadata" if not got else "invalid bearer token"
        handler = continuation(handler_call_details)

        def deny(_request, context):  # noqa: ANN001
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{reason}: send 'authorization: Bearer <token>'")

        if handler is None:
            return None
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(deny)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(deny)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny)


def _generic_handler(service: CloudLMService) -> grpc.GenericRpcHandler:
    handlers = {
        "Sketch": grpc.unary_unary_rpc_method_handler(
            service.Sketch, request_deserializer=_parser(pb.SketchRequest), response_serializer=_serialize
        ),
        "Decode": grpc.stream_stream_rpc_method_handler(
            service.Decode, request_deserializer=_parser(pb.DecodeRequest), response_serializer=_serialize
        ),
        "EvalOnlyGenerate": grpc.unary_unary_rpc_method_handler(
            service.EvalOnlyGenerate,
            request_deserializer=_parser(pb.EvalOnlyGenerateRequest),
            response_serializer=_serialize,
        ),
    }
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


@dataclass
class CloudServer:
    """A running cloud: the gRPC server, its service and health servicer, and the bound port."""

    server: grpc.Server
    service: CloudLMService
    health: Any
    port: int
    address: str
    pool: DaemonThreadPool | None = None

    def stop(self, grace: float = 5.0) -> None:
        """Graceful stop: refuse new sessions, mark NOT_SERVING, let open calls finish for ``grace`` s."""
        from grpc_health.v1 import health_pb2

        self.service.stop_accepting()
        self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.server.stop(grace).wait()
        self.service.shutdown()
        if self.pool is not None:
            self.pool.shutdown(wait=True, timeout=1.0)
        log.info(
            "cloud stopped: %d sessions served, %d bytes in, %d bytes out",
            self.service.sessions_served, self.service.total_bytes_in, self.service.total_bytes_out,
        )

    def kill(self) -> None:
        """Abrupt stop (tests: simulate a crashed cloud); open calls are cut immediately."""
        self.server.stop(0)
        self.service.shutdown()
        if self.pool is not None:
            self.pool.shutdown(wait=False)

    def wait(self) -> None:
        self.server.wait_for_termination()


def start_cloud_server(config: CloudConfig, lm: LoadedModel | None = None) -> CloudServer:
    """Build and start the cloud on ``config.host:config.port`` (port 0 = ephemeral) and return it."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    config.validate()
    lm = lm if lm is not None else load_model(config.model, seed=config.seed)
    service = CloudLMService(config, lm)
    interceptors = [_AuthInterceptor(config.token)] if config.token else []
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        # the largest reply is a k = V packet: a 4-byte value and a varint id (<= 5 bytes) per token
        ("grpc.max_send_message_length", max(config.max_message_bytes, lm.vocab_size * 9 + 1024)),
        ("grpc.so_reuseport", 0),
    ]
    # Daemon workers: a handler stuck for any reason must not keep the interpreter alive at exit.
    pool = DaemonThreadPool(max_workers=config.workers, thread_name_prefix="cogen-rpc")
    server = grpc.server(
        pool,
        interceptors=interceptors,
        options=options,
        maximum_concurrent_rpcs=config.max_sessions + 8,
    )
    server.add_generic_rpc_handlers((_generic_handler(service),))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{config.host}:{config.port}"
    if config.insecure:
        port = server.add_insecure_port(address)
    else:
        from fedcogen.protocols.tls import server_credentials

        port = server.add_secure_port(address, server_credentials(config.tls_dir, config.require_client_cert))
    if port == 0:
        raise ValueError(f"could not bind the cloud to {address}")
    server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "cloud %s serving %s on %s:%d (%s, model %s)",
        SERVICE_NAME, "plaintext" if config.insecure else "TLS", config.host, port,
        "token auth" if config.token else "no auth", lm.name,
    )
    return CloudServer(server, service, health_servicer, port, f"{config.host}:{port}", pool)

