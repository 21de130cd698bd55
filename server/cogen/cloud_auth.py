"""Bearer-token authentication of the cloud's gRPC calls (a server interceptor)."""

from __future__ import annotations

import hmac

import grpc

HEALTH_PREFIX = "/grpc.health.v1.Health/"


class AuthInterceptor(grpc.ServerInterceptor):
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
