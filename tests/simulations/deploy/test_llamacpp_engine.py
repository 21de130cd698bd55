"""The cloud on a real serving engine: llama.cpp's OpenAI-compatible server (``llama-cpp-python[server]``)
started on loopback, serving the embedded SmolLM2 GGUF, behind the engine backend, with devices talking
to the cloud over TLS and a bearer token.

``llama-cpp-python`` is an optional third-party engine that compiles llama.cpp (``make engine``, ~11
minutes on 2 cores, docs/serving-engine.md); CI does not build it, so the engine tests skip with that
reason where ``llama_cpp`` does not import. The launcher's own checks run everywhere."""

from __future__ import annotations

import importlib.util
import secrets
from pathlib import Path

import grpc
import httpx
import pytest
import torch

from fedcogen.client.cogen.cloud_client import CloudClient, CloudRefused
from fedcogen.client.cogen.cogen_device import CogenDevice, DeviceConfig
from fedcogen.models import chat_input_ids, load_model
from fedcogen.prompts import cloud_prompt
from fedcogen.protocols.security import tls
from fedcogen.server.cogen.cloud_service import CloudConfig, start_cloud_server
from fedcogen.server.cogen.engine_backend import EngineClient, EngineConfig, EngineError
from fedcogen.simulations.bench.bench_engine import token_agreement
from fedcogen.simulations.deploy.llamacpp_engine import (
    BUILD_CMAKE_ARGS,
    LlamaCppConfig,
    LlamaCppServer,
    engine_missing_reason,
)
from fedcogen.simulations.federation.supervisor import DeploymentError, port_open

MISSING = engine_missing_reason()
needs_engine = pytest.mark.skipif(MISSING is not None, reason=f"optional engine not built here: {MISSING}")

INSTRUCTION = "Write a short note to my landlord about the broken heater."
CONTEXT = "Landlord: Mr. Osei. Flat 4B, heater broken since Monday."
ENGINE_KEY = "engine-" + secrets.token_hex(8)


def test_the_launcher_refuses_a_non_loopback_host_and_a_missing_model(tmp_path):
    with pytest.raises(ValueError, match="loopback only"):
        LlamaCppServer(LlamaCppConfig(host="0.0.0.0"))
    with pytest.raises(FileNotFoundError, match="GGUF model file not found"):
        LlamaCppServer(LlamaCppConfig(model_path=str(tmp_path / "none.gguf")))
    settings = LlamaCppServer(LlamaCppConfig(api_key="k", n_ctx=512)).settings()
    assert settings["api_key"] == "k" and settings["host"] == "127.0.0.1"
    (model,) = settings["models"]
    assert model["logits_all"] and model["cache"]  # top-k log-probs and prompt caching
    assert model["model"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and model["n_ctx"] == 512


def test_make_engine_and_the_docs_use_the_flags_that_run_here():
    root = Path(__file__).resolve().parents[3]
    assert f"LLAMA_CMAKE_ARGS := {BUILD_CMAKE_ARGS}" in (root / "Makefile").read_text()
    assert f'CMAKE_ARGS="{BUILD_CMAKE_ARGS}"' in (root / "docs" / "serving-engine.md").read_text()
    assert "AMX_TILE=OFF" in BUILD_CMAKE_ARGS and "NATIVE=OFF" in BUILD_CMAKE_ARGS


def test_without_the_engine_start_fails_with_how_to_build_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    assert "make engine" in (engine_missing_reason() or "")
    with pytest.raises(DeploymentError, match="llama-cpp-python is not installed.*make engine"):
        LlamaCppServer(LlamaCppConfig()).start()


@pytest.fixture(scope="module")
def engine():
    with LlamaCppServer(LlamaCppConfig(api_key=ENGINE_KEY, n_threads=1, start_timeout_s=120)) as srv:
        yield srv


@pytest.fixture(scope="module")
def cloud_lm():
    return load_model("smollm2")


@pytest.mark.slow
@needs_engine
def test_start_waits_for_the_api_and_stop_ends_the_process_tree():
    key = "stop-test-" + secrets.token_hex(8)
    srv = LlamaCppServer(LlamaCppConfig(api_key=key, n_threads=1, start_timeout_s=120)).start()
    proc = srv.process
    assert proc is not None and proc.running
    assert httpx.get(f"{srv.url}/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert httpx.get(f"{srv.url}/models").status_code == 401  # the engine's own key protects the hop behind the cloud
    assert key not in " ".join(proc.argv)  # the key travels in a private config file, not on the command line
    conf = Path(proc.argv[-1])
    assert conf.stat().st_mode & 0o777 == 0o600
    srv.stop()
    assert not proc.running and not port_open("127.0.0.1", srv.port)
    srv.stop()  # idempotent


@pytest.mark.slow
@needs_engine
def test_the_engine_top_k_matches_the_builtin_model(engine, cloud_lm):
    client = EngineClient(EngineConfig(engine.url, engine.model_name, ENGINE_KEY, flavour="llama-cpp-python"),
                          cloud_lm.tokenizer, cloud_lm.vocab_size)
    seq = chat_input_ids(cloud_lm.tokenizer, cloud_prompt(INSTRUCTION))
    try:
        with torch.inference_mode():
            logits = cloud_lm.model(input_ids=torch.tensor([seq])).logits[0]
        want = torch.log_softmax(logits[-1].float(), -1)
        got = client.score(seq, 1, 10)[0]
        assert int(got.argmax()) == int(want.argmax())
        shared = set(torch.topk(got, 10).indices.tolist()) & set(torch.topk(want, 10).indices.tolist())
        assert len(shared) >= 7  # Q4_1 in llama.cpp's kernels vs its fp32 dequantisation in PyTorch
        assert abs(float(got[want.argmax()]) - float(want.max())) < 0.1
        client.echo_ok = True  # its echo returns prompt log-probs: the same rows as one request per position
        echo = client.score(seq, 4, 10)
        client.echo_ok = False
        per_position = client.score(seq, 4, 10)
        top = torch.topk(per_position, 5, dim=-1).indices
        assert torch.equal(torch.topk(echo, 5, dim=-1).indices, top)
        # same positions, same top-5; values agree to llama.cpp's batch-size-dependent rounding (a position
        # read in a batch of prompt tokens vs alone: up to ~0.1 nats measured on the tail of the top-5)
        assert torch.allclose(echo.gather(1, top), per_position.gather(1, top), atol=0.25)
        assert torch.allclose(echo.gather(1, top[:, :1]), per_position.gather(1, top[:, :1]), atol=0.02)
        for i in range(4):  # row i is the distribution after seq[: len(seq) - 3 + i]
            assert int(per_position[i].argmax()) == int(logits[len(seq) - 4 + i].argmax())
        bad = EngineClient(EngineConfig(engine.url, engine.model_name, "wrong", flavour="llama-cpp-python"),
                           cloud_lm.tokenizer, cloud_lm.vocab_size)
        with pytest.raises(EngineError, match="HTTP 401"):
            bad.score(seq, 1, 4)
        bad.close()
    finally:
        client.close()


@pytest.mark.slow
@needs_engine
def test_every_variant_answers_through_the_engine_over_tls_and_token(engine, cloud_lm, tmp_path):
    tls.ensure_dev_certs(tmp_path)
    token = secrets.token_hex(8)
    common = dict(model="smollm2", tls_dir=str(tmp_path), token=token, sketch_max_new_tokens=12)
    builtin = start_cloud_server(CloudConfig(**common), lm=cloud_lm)
    backed = start_cloud_server(CloudConfig(**common, engine_url=engine.url, engine_model=engine.model_name,
                                            engine_api_key=ENGINE_KEY, engine_max_logprobs=16,
                                            engine_flavour="llama-cpp-python"), lm=cloud_lm)
    device_lm = load_model("smollm2-27l")
    answers = {}
    try:
        for name, srv in (("builtin", builtin), ("engine", backed)):
            for variant, draft in (("logit", 0), ("logit", 4), ("sketch", 0)):
                dev = CogenDevice(DeviceConfig(device_model="smollm2-27l", cloud=srv.address, tls_dir=str(tmp_path),
                                               token=token, k=16, max_new_tokens=12, draft_tokens=draft),
                                  device_lm=device_lm)
                try:
                    answers[name, variant, draft] = dev.generate(INSTRUCTION, CONTEXT, variant)
                finally:
                    dev.close()
        engine_answers = [a for (name, *_), a in answers.items() if name == "engine"]
        assert all(a.tokens > 0 and not a.fell_back and not a.warnings for a in engine_answers)
        assert answers["engine", "sketch", 0].sketch  # the engine wrote the sketch
        assert backed.service.batcher.client.requests > 0  # the engine did the work
        # speculative is lossless under greedy decoding: the same tokens as one round trip per token
        assert answers["engine", "logit", 4].token_ids == answers["engine", "logit", 0].token_ids
        assert token_agreement(answers["engine", "logit", 0].token_ids,
                               answers["builtin", "logit", 0].token_ids) >= 0.5
        intruder = CloudClient(backed.address, tls_dir=str(tmp_path), token="wrong")  # device auth is unchanged
        with pytest.raises(CloudRefused) as err:
            intruder.sketch(INSTRUCTION, 4, timeout=30)
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
        intruder.close()
    finally:
        builtin.stop(grace=1)
        backed.stop(grace=1)
