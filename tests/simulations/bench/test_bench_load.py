"""Reduced load benchmark: concurrent sessions against one TLS + token cloud, zero errors."""

from __future__ import annotations

from fedcogen.simulations.bench.bench_load import LoadConfig, run_load


def test_concurrent_sessions_over_tls_with_token_have_no_errors() -> None:
    result = run_load(LoadConfig(sessions=4, seconds=3.0, tokens=4))
    assert result["errors"] == 0, result["error_examples"]
    assert result["sessions_completed"] >= 4 and result["steps"] >= 20
    lat = result["step_latency_ms"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["max"]
