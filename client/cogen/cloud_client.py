"""The device's connection to the CoGenesis cloud: a gRPC channel with wire capture and the token,
and one bidirectional ``Decode`` stream per answer.

Every call has a deadline; errors are translated into :class:`CloudUnavailable` (worth a reconnect
or a device-only fallback) or :class:`CloudRefused` (auth, version, bad request: retrying cannot fix).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import grpc

from fedcogen.client.cogen.wire_capture import WireCapture
from fedcogen.protocols import cogen_pb2 as pb
from fedcogen.protocols import cogen_pb2_grpc as pb_grpc
from fedcogen.protocols.codecs import logit_codec
from fedcogen.protocols.security.tls import channel_credentials

RECOVERABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class CloudError(RuntimeError):
    """Base of cloud call failures; ``code`` is the gRPC status code (None for local timeouts)."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class CloudUnavailable(CloudError):
    """The cloud did not answer in time or went away (the device may fall back)."""


class CloudRefused(CloudError):
    """The cloud answered with an error that retrying cannot fix (auth, version, bad request)."""


def _metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


class CloudClient:
    """A channel to the cloud with the wire capture installed and the token attached to every call."""

    def __init__(
        self,
        address: str,
        *,
        tls_dir: str | None = None,
        token: str | None = None,
        insecure: bool = False,
        capture: WireCapture | None = None,
        max_message_bytes: int = 8 << 20,
    ) -> None:
        if not insecure and not tls_dir:
            raise ValueError("connecting to the cloud needs --tls-dir DIR (with --token) or an explicit --insecure")
        self.address, self.tls_dir, self.token, self.insecure = address, tls_dir, token, insecure
        self.capture = capture if capture is not None else WireCapture()
        self.max_message_bytes = max_message_bytes
        self._raw: grpc.Channel | None = None
        self.stub: pb_grpc.CloudLMStub | None = None
        self.connect()

    def connect(self) -> None:
        self.close()
        options = [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.enable_retries", 0),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        if self.insecure:
            self._raw = grpc.insecure_channel(self.address, options=options)
        else:
            self._raw = grpc.secure_channel(self.address, channel_credentials(self.tls_dir), options=options)
        self.stub = pb_grpc.CloudLMStub(grpc.intercept_channel(self._raw, self.capture))

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return _metadata(self.token)

    def health(self, timeout: float = 2.0) -> bool:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            reply = health_pb2_grpc.HealthStub(self._raw).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def sketch(self, instruction: str, max_new_tokens: int = 0, timeout: float = 120.0) -> pb.SketchReply:
        req = pb.SketchRequest(
            protocol_version=logit_codec.PROTOCOL_VERSION, instruction=instruction, max_new_tokens=max_new_tokens
        )
        try:
            return self.stub.Sketch(req, timeout=timeout, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise _translate(exc) from exc

    def eval_only_generate(self, full_prompt: str, max_new_tokens: int, timeout: float = 300.0) -> str:
        req = pb.EvalOnlyGenerateRequest(
            protocol_version=logit_codec.PROTOCOL_VERSION, full_prompt=full_prompt, max_new_tokens=max_new_tokens
        )
        try:
            return self.stub.EvalOnlyGenerate(req, timeout=timeout, metadata=self.metadata).text
        except grpc.RpcError as exc:
            raise _translate(exc) from exc

    def open_session(
        self,
        instruction: str = "",
        *,
        instruction_ids: Sequence[int] | None = None,
        k: int = 64,
        encoding: str = "fp16",
        max_tokens: int = 0,
        step_timeout: float = 20.0,
        protocol_version: int = logit_codec.PROTOCOL_VERSION,
    ) -> DecodeSession:
        open_msg = pb.SessionOpen(
            protocol_version=protocol_version,
            instruction=instruction if not instruction_ids else "",
            instruction_ids=list(instruction_ids or []),
            k=k,
            encoding=logit_codec.CodecConfig(k, encoding).encoding_value(),
            max_tokens=max_tokens,
        )
        return DecodeSession(self, open_msg, step_timeout)


def _translate(exc: grpc.RpcError) -> Exception:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if code in RECOVERABLE:
        return CloudUnavailable(f"cloud {code.name if code else '?'}: {details}", code)
    return CloudRefused(f"cloud refused ({code.name if code else '?'}): {details}", code)


_END = object()


class DecodeSession:
    """One bidirectional ``Decode`` stream: send steps without waiting, receive with a per-step deadline.

    Sending is decoupled from receiving so that the device computes its own next distribution while
    the cloud computes the cloud's (the two overlap instead of adding up).
    """

    def __init__(self, client: CloudClient, open_msg: pb.SessionOpen, step_timeout: float) -> None:
        self.step_timeout = step_timeout
        self.owed = 0
        self.fingerprint = ""
        self.session_id = ""
        self.stats: pb.SessionStats | None = None
        self._requests: queue.Queue[Any] = queue.Queue()
        self._replies: queue.Queue[Any] = queue.Queue()
        self._finished = threading.Event()  # stream over: stop feeding requests
        self._call = client.stub.Decode(self._outgoing(), metadata=client.metadata)
        self._reader = threading.Thread(target=self._read, name="cogen-decode-reader", daemon=True)
        self._reader.start()
        self._send(pb.DecodeRequest(open=open_msg))

    def _outgoing(self) -> Iterator[Any]:
        """Requests for gRPC's sender thread; bounded gets so it ends once the stream is over."""
        while not self._finished.is_set():
            try:
                msg = self._requests.get(timeout=0.5)
            except queue.Empty:
                continue
            if msg is _END:
                return
            yield msg

    def _read(self) -> None:
        try:
            for reply in self._call:
                self._replies.put(reply)
        except grpc.RpcError as exc:
            self._replies.put(exc)
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            self._replies.put(exc)
        self._finished.set()
        self._replies.put(_END)

    def _send(self, msg: pb.DecodeRequest) -> None:
        self._requests.put(msg)
        self.owed += 1

    def send_step(self, token_ids: Sequence[int], *, rewind: int = 0, score: int = 0, silent: bool = False) -> None:
        """Append ``token_ids`` after dropping ``rewind`` draft tokens; a reply follows unless ``silent``
        (one distribution after the last token, or a block for the last ``score`` > 1 tokens)."""
        step = pb.TokenStep(token_ids=list(token_ids), rewind=rewind, score=score if score > 1 else 0, silent=silent)
        self._requests.put(pb.DecodeRequest(step=step))
        if not silent:
            self.owed += 1

    def _recv_one(self) -> pb.DecodeReply:
        try:
            item = self._replies.get(timeout=self.step_timeout)
        except queue.Empty:
            self.cancel()
            raise CloudUnavailable(
                f"cloud did not answer within {self.step_timeout:.1f} s", grpc.StatusCode.DEADLINE_EXCEEDED
            ) from None
        if item is _END:
            raise CloudUnavailable("cloud closed the stream")
        if isinstance(item, grpc.RpcError):
            raise _translate(item)
        if isinstance(item, Exception):
            raise CloudUnavailable(f"stream failed: {item}")
        self.owed -= 1
        if item.tokenizer_fingerprint:
            self.fingerprint = item.tokenizer_fingerprint
        if item.session_id:
            self.session_id = item.session_id
        return item

    def latest(self) -> pb.LogitPacket:
        """Receive every owed reply and return the newest distribution (for the current prefix)."""
        if self.owed == 0:
            raise RuntimeError("no distribution owed: send a step first")
        reply = None
        while self.owed > 0:
            reply = self._recv_one()
        return reply.logits

    def next_reply(self) -> pb.DecodeReply:
        """Receive the oldest owed reply (replies come in the order of the steps that asked for them)."""
        if self.owed == 0:
            raise RuntimeError("no reply owed: send a step first")
        return self._recv_one()

    def latest_reply(self) -> pb.DecodeReply:
        """Receive every owed reply and return the newest one (a ``logits`` packet or a ``block``)."""
        if self.owed == 0:
            raise RuntimeError("no distribution owed: send a step first")
        reply = None
        while self.owed > 0:
            reply = self._recv_one()
        return reply

    def close(self) -> pb.SessionStats | None:
        """Explicit close: drain owed replies, ask the cloud for its counters, end the stream."""
        try:
            while self.owed > 0:
                self._recv_one()
            self._send(pb.DecodeRequest(close=pb.SessionClose(reason="done")))
            reply = self._recv_one()
            self.stats = reply.closed
        except (CloudUnavailable, CloudRefused):
            self.stats = None
        finally:
            self._requests.put(_END)
        return self.stats

    def cancel(self) -> None:
        self._finished.set()
        self._requests.put(_END)
        try:
            self._call.cancel()
        except Exception:  # noqa: BLE001 - best effort
            pass
