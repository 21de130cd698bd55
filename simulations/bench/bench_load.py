"""`fedcogen bench load`: many concurrent CoGenesis sessions against one cloud (TLS + bearer token).

Why: the cloud's reliability work (bounded waits, batcher teardown, reaper ordering) only matters
under concurrency. This benchmark starts one cloud on loopback with TLS and a token, runs
``sessions`` device threads for ``seconds`` (each: open a Decode session, step ``tokens`` greedy
tokens, close, repeat) and reports every error plus per-step latency percentiles. A healthy cloud
shows 0 errors; the latency figures are for this machine and model only.
"""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fedcogen.client.cogen.cloud_client import CloudClient
from fedcogen.protocols.codecs import logit_codec
from fedcogen.protocols.security import tls
from fedcogen.server.cogen.cloud_service import CloudConfig, start_cloud_server


@dataclass
class LoadConfig:
    """Load shape; the defaults are the issue's target (32 sessions for 60 s)."""

    sessions: int = 32
    seconds: float = 60.0
    tokens: int = 16
    k: int = 64
    model: str = "tiny-large"
    step_timeout_s: float = 60.0


def run_load(cfg: LoadConfig = LoadConfig()) -> dict[str, Any]:
    """Run the load and return counts, errors and latency percentiles (milliseconds)."""
    import secrets

    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="fedcogen-load-") as tmp:
        tls.ensure_dev_certs(tmp)
        server = start_cloud_server(CloudConfig(
            model=cfg.model, tls_dir=tmp, token=token, max_sessions=max(64, cfg.sessions),
            max_tokens_per_session=cfg.tokens + 8, step_timeout_s=cfg.step_timeout_s,
        ))
        latencies: list[list[float]] = [[] for _ in range(cfg.sessions)]
        errors: list[str] = []
        completed = [0] * cfg.sessions
        stop_at = time.monotonic() + cfg.seconds
        start = threading.Barrier(cfg.sessions)

        def device(i: int) -> None:
            client = CloudClient(server.address, tls_dir=tmp, token=token)
            try:
                start.wait()
                while time.monotonic() < stop_at:
                    session = client.open_session(f"Write note {i} about topic {completed[i]}.", k=cfg.k,
                                                  step_timeout=cfg.step_timeout_s)
                    t0 = time.perf_counter()
                    packet = session.latest()
                    latencies[i].append(time.perf_counter() - t0)
                    for _ in range(cfg.tokens):
                        nxt = int(logit_codec.decode(packet).argmax())
                        t0 = time.perf_counter()
                        session.send_step([nxt])
                        packet = session.latest()
                        latencies[i].append(time.perf_counter() - t0)
                    if session.close() is None:
                        raise RuntimeError("close returned no session stats")
                    completed[i] += 1
            except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                errors.append(f"session thread {i}: {type(exc).__name__}: {exc}")
            finally:
                client.close()

        threads = [threading.Thread(target=device, args=(i,), name=f"load-{i}", daemon=True)
                   for i in range(cfg.sessions)]
        t_start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=cfg.seconds + cfg.step_timeout_s * 2 + 60)
        elapsed = time.monotonic() - t_start
        hung = [t.name for t in threads if t.is_alive()]
        batches, rows = server.service.batcher.batches, server.service.batcher.batched_rows
        server.stop(grace=2)
    steps = np.array([x for per in latencies for x in per]) * 1000.0
    return {
        "config": asdict(cfg),
        "tls": True,
        "token_auth": True,
        "errors": len(errors) + len(hung),
        "error_examples": (errors + [f"{n} still running" for n in hung])[:5],
        "sessions_completed": sum(completed),
        "steps": int(steps.size),
        "steps_per_s": round(steps.size / elapsed, 1) if elapsed else 0.0,
        "step_latency_ms": {
            "p50": round(float(np.percentile(steps, 50)), 2) if steps.size else None,
            "p99": round(float(np.percentile(steps, 99)), 2) if steps.size else None,
            "max": round(float(steps.max()), 2) if steps.size else None,
        },
        "mean_batch_rows": round(rows / batches, 2) if batches else 0.0,
        "seconds": round(elapsed, 1),
    }


__all__ = ["LoadConfig", "run_load"]
