"""Child processes of a local run: a free loopback port, and the CoGenesis cloud as a child process.

One helper for every place that starts a cloud (``fedcogen eval --spawn-cloud``, the demo, the
CoGenesis benchmark): it picks the port, keeps the token out of the command line, waits for the
gRPC health check, and always stops the process when the block exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedcogen.protocols.security.secrets_io import CLOUD_TOKEN_ENV
from fedcogen.protocols.security.tls import channel_credentials
from fedcogen.simulations.federation.supervisor import free_port

log = logging.getLogger(__name__)


def wait_for_health(address: str, proc: subprocess.Popen | None, timeout_s: float,
                    tls_dir: Path | None = None, token: str | None = None) -> None:
    """Poll the gRPC health service until SERVING; fail early if the process dies.

    With ``tls_dir`` the check goes over TLS (trusting that folder's CA) and carries ``token``.
    """
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    last = "no answer"
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    if tls_dir is not None:
        channel_cm = grpc.secure_channel(address, channel_credentials(tls_dir))
    else:
        channel_cm = grpc.insecure_channel(address)
    with channel_cm as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"cloud process exited with code {proc.returncode} before serving")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0, metadata=metadata)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as exc:
                last = exc.code().name
            time.sleep(0.2)
    raise RuntimeError(f"cloud at {address} not serving after {timeout_s:.0f} s (last: {last})")


@dataclass
class SpawnedCloud:
    """A cloud process started for one evaluation run."""

    address: str
    process: subprocess.Popen
    log_path: Path | None
    timeout_s: float = 300.0
    tls_dir: Path | None = None
    token: str | None = None

    def wait_ready(self) -> str:
        """Block until the cloud answers SERVING (or fail if it died); returns the address."""
        wait_for_health(self.address, self.process, self.timeout_s, self.tls_dir, self.token)
        return self.address

    def stop(self, timeout_s: float = 10.0) -> int:
        """Terminate (then kill after ``timeout_s``) and return the exit code; harmless when already stopped."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout_s)
        return int(self.process.returncode)


@contextlib.contextmanager
def spawned_cloud(
    cloud_model: str, *, allow_eval_only_context: bool = False, timeout_s: float = 120.0,
    log_path: Path | None = None, wait: bool = True, tls_dir: Path | None = None, token: str | None = None,
    serve_args: Sequence[str] = (),
) -> Iterator[SpawnedCloud]:
    """Run ``fedcogen cloud serve`` on a free loopback port and yield it once it is SERVING.

    Plaintext (``--insecure``) unless ``tls_dir`` is given: then TLS with that folder's server pair,
    and every call must carry ``token``.

    With ``wait=False`` it is yielded right after the process starts, so the caller can load the
    device model while the cloud loads its own, then call :meth:`SpawnedCloud.wait_ready`.

    The process is always stopped (terminate, then kill) when the block exits, also on errors and
    Ctrl-C, so an evaluation never leaves a cloud behind.
    """
    port = free_port()
    security = ["--tls-dir", str(tls_dir)] if tls_dir else ["--insecure"]
    env = {k: v for k, v in os.environ.items() if k != CLOUD_TOKEN_ENV}
    if tls_dir and token:  # the token travels in the child's environment, never on its command line
        env[CLOUD_TOKEN_ENV] = token
    cmd = [sys.executable, "-m", "fedcogen.cli", "cloud", "serve", *security, "--host", "127.0.0.1",
           "--port", str(port), "--model", cloud_model]
    if allow_eval_only_context:
        cmd.append("--allow-eval-only-context")
    cmd += list(serve_args)  # further `fedcogen cloud serve` flags (batch size, limits)
    out = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed below
    log.info("starting cloud: %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        cloud = SpawnedCloud(f"127.0.0.1:{port}", proc, log_path, timeout_s, tls_dir, token)
        if wait:
            cloud.wait_ready()
        yield cloud
    finally:
        SpawnedCloud("", proc, log_path).stop()
        if log_path:
            out.close()  # type: ignore[union-attr]
