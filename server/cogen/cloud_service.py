"""The CoGenesis cloud: a gRPC ``CloudLM`` service hosting the large model, with a dynamic batcher.

Why this shape:

* **Per-session KV cache, no copies.** A ``Decode`` stream is one generation. Each session owns KV
  buffers that grow in place (``kv_slots.SessionKV``); a committed token costs one token of compute
  and a rejected speculative draft is dropped by moving the length back.
* **Continuous batching with chunked prefill** (``cloud_batcher.DynamicBatcher``). One scheduler thread
  packs the tokens of every ready step (single-token steps, scored drafts, a chunk of a long prompt,
  Sketch generations) into ONE forward; attention runs per session over its own buffer, so sessions
  of different lengths need no padding. A long prompt is read ``prefill_chunk`` tokens per tick, so it
  delays other sessions' steps by at most a chunk.
* **Or a serving engine** (``engine_backend``): the model runs in vLLM / SGLang / llama.cpp server
  behind the same contract (docs/serving-engine.md).
* **Privacy by construction.** The API has no field for private context; ``EvalOnlyGenerate``
  (which does take a full prompt) is refused unless the operator passes ``--allow-eval-only-context``.
* **Hard limits.** Max sessions, max tokens per session, max prompt tokens, max message size, idle
  sessions reaped, client deadlines honoured; every violation is a clean gRPC status with a message.
* **Security.** TLS + ``authorization: Bearer <token>`` checked by a server interceptor
  (UNAUTHENTICATED otherwise); plaintext only when explicitly ``insecure``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import grpc

from fedcogen.accelerator import model_device
from fedcogen.models import LoadedModel, load_model
from fedcogen.protocols import cogen_pb2 as pb
from fedcogen.protocols.security.tls import server_credentials
from fedcogen.server.cogen.cloud_auth import AuthInterceptor
from fedcogen.server.cogen.cloud_config import CloudConfig
from fedcogen.server.cogen.cloud_servicer import CloudLMService, request_parser, serialize
from fedcogen.server.cogen.daemon_pool import DaemonThreadPool

log = logging.getLogger(__name__)

SERVICE_NAME = "fedcogen.cogen.v1.CloudLM"


def _generic_handler(service: CloudLMService) -> grpc.GenericRpcHandler:
    handlers = {
        "Sketch": grpc.unary_unary_rpc_method_handler(
            service.Sketch, request_deserializer=request_parser(pb.SketchRequest), response_serializer=serialize
        ),
        "Decode": grpc.stream_stream_rpc_method_handler(
            service.Decode, request_deserializer=request_parser(pb.DecodeRequest), response_serializer=serialize
        ),
        "EvalOnlyGenerate": grpc.unary_unary_rpc_method_handler(
            service.EvalOnlyGenerate,
            request_deserializer=request_parser(pb.EvalOnlyGenerateRequest),
            response_serializer=serialize,
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
    if lm is not None and config.adapter:
        raise ValueError("start_cloud_server got a loaded model and an adapter: pass the model with the adapter "
                         "merged (load_model(..., adapter=...)) or let the service load it")
    lm = lm if lm is not None else load_model(config.model, seed=config.seed, device=config.device,
                                              adapter=config.adapter)
    service = CloudLMService(config, lm)
    interceptors = [AuthInterceptor(config.token)] if config.token else []
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        # the largest reply is a k = V packet: a 4-byte value and a varint id (<= 5 bytes) per token
        ("grpc.max_send_message_length", service.reply_limit),
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
        port = server.add_secure_port(address, server_credentials(config.tls_dir, config.require_client_cert))
    if port == 0:
        raise ValueError(f"could not bind the cloud to {address}")
    server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "cloud %s serving %s on %s:%d (%s, model %s on %s)",
        SERVICE_NAME, "plaintext" if config.insecure else "TLS", config.host, port,
        "token auth" if config.token else "no auth", lm.name, model_device(lm.model),
    )
    return CloudServer(server, service, health_servicer, port, f"{config.host}:{port}", pool)
