"""Record every message the device sends to / receives from the cloud (wire audit + byte ledger).

A client interceptor sees each request after the application built it and each response before the
application reads it, so the serialized bytes recorded here are exactly the protobuf payloads that
cross the network (gRPC adds 5 bytes of framing per message plus HTTP/2 headers, not counted).
The privacy tests search these bytes for the private context and canary strings: if the device ever
put them into a request, ``contains`` finds them. ``contains`` is an exact byte search; the fact
audit (simulations/privacy/fact_audit.py) also decodes :meth:`WireCapture.sent_token_streams` and matches
facts by near match (case, punctuation, inflection) and as token-id runs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc


@dataclass
class WireRecord:
    """One message on the wire."""

    method: str
    direction: str  # "sent" or "received"
    size: int
    raw: bytes
    message: Any = None


def _serialize(msg: Any) -> bytes:
    if isinstance(msg, bytes | bytearray):
        return bytes(msg)
    return msg.SerializeToString()


class _ResponseStream:
    """Wraps a streaming call: records each response, keeps ``cancel()`` and the other Call methods."""

    def __init__(self, call: Any, capture: WireCapture, method: str) -> None:
        self._call, self._capture, self._method = call, capture, method

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        msg = next(self._call)
        self._capture.record(self._method, "received", msg)
        return msg

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


def sent_token_streams(records: list[WireRecord]) -> tuple[list[int], list[int]]:
    """The token ids a device sent, as ``(stream, view)``: ``stream`` concatenates the
    ``instruction_ids`` of session opens and the ids of every step as sent; ``view`` is the cloud's
    sequence after speculative rewinds. The fact audit (simulations/privacy/fact_audit.py) decodes both and
    searches them for facts as text (exact and near matches) and as token-id runs."""
    stream: list[int] = []
    view: list[int] = []  # the cloud's sequence: rejected draft tokens rewound
    for r in records:
        if r.direction != "sent" or r.message is None:
            continue
        msg = r.message
        try:
            kind = msg.WhichOneof("kind")
        except (AttributeError, ValueError):  # not a DecodeRequest
            continue
        if kind == "open":
            stream.extend(msg.open.instruction_ids)
            view.extend(msg.open.instruction_ids)
        elif kind == "step":
            stream.extend(msg.step.token_ids)
            del view[len(view) - min(msg.step.rewind, len(view)):]
            view.extend(msg.step.token_ids)
    return stream, view


@dataclass
class WireCapture(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Client interceptor; install with ``grpc.intercept_channel(channel, capture)``."""

    records: list[WireRecord] = field(default_factory=list)
    keep_raw: bool = True
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, method: str, direction: str, msg: Any) -> None:
        raw = _serialize(msg)
        rec = WireRecord(method, direction, len(raw), raw if self.keep_raw else b"", msg)
        with self._lock:
            self.records.append(rec)

    @property
    def sent_bytes(self) -> int:
        with self._lock:
            return sum(r.size for r in self.records if r.direction == "sent")

    @property
    def received_bytes(self) -> int:
        with self._lock:
            return sum(r.size for r in self.records if r.direction == "received")

    def contains(self, text: str) -> bool:
        """True if ``text`` (UTF-8) occurs in any recorded message, in either direction."""
        needle = text.encode("utf-8")
        with self._lock:
            return any(needle in r.raw for r in self.records)

    def sent_token_streams(self) -> tuple[list[int], list[int]]:
        """:func:`sent_token_streams` of this capture's records."""
        with self._lock:
            return sent_token_streams(list(self.records))

    def contains_token_run(self, token_ids: list[int]) -> bool:
        """True if ``token_ids`` occur consecutively in the token-id fields of any sent message.

        Text search misses context that travels as token ids; this checks the ``instruction_ids`` of
        session opens and the ids of steps (concatenated across the session, both as sent and as the
        cloud's sequence after speculative rewinds).
        """
        n, want = len(token_ids), list(token_ids)
        return n > 0 and any(s[i : i + n] == want for s in self.sent_token_streams() for i in range(len(s) - n + 1))

    def clear(self) -> None:
        with self._lock:
            self.records.clear()

    def summary(self) -> dict[str, int]:
        return {"sent_bytes": self.sent_bytes, "received_bytes": self.received_bytes, "messages": len(self.records)}

    # ------------------------------------------------------------ interceptor hooks
    def intercept_unary_unary(self, continuation, client_call_details, request):  # noqa: ANN001
        method = client_call_details.method
        self.record(method, "sent", request)
        outcome = continuation(client_call_details, request)
        try:
            response = outcome.result()
        except grpc.RpcError:
            return outcome
        self.record(method, "received", response)
        return outcome

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):  # noqa: ANN001
        method = client_call_details.method

        def recorded() -> Iterator[Any]:
            for msg in request_iterator:
                self.record(method, "sent", msg)
                yield msg

        call = continuation(client_call_details, recorded())
        return _ResponseStream(call, self, method)
