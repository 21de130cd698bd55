"""The production-engine backend: top-k log-probs round-trip over real HTTP on loopback (a minimal
OpenAI-compatible server over a real model), and a cloud on that backend serves devices through the
unchanged gRPC contract and auth with the tokens of the in-process cloud."""

from __future__ import annotations

import json

import grpc
import httpx
import pytest
import torch

from fedcogen.cli import build_parser
from fedcogen.client.cogen.cloud_client import CloudClient, CloudRefused
from fedcogen.client.cogen.cogen_device import CogenDevice, DeviceConfig
from fedcogen.models import load_model
from fedcogen.server.cogen.cloud_service import CloudConfig, start_cloud_server
from fedcogen.server.cogen.engine_backend import EngineClient, EngineConfig, EngineError
from fedcogen.simulations.deploy.reference_engine import ReferenceEngine

INSTRUCTION = "Write a short note to my landlord about the broken heater."
CONTEXT = "Landlord: Mr. Osei. Flat 4B, heater broken since Monday."


@pytest.fixture(scope="module")
def cloud_lm():
    return load_model("tiny-large")


@pytest.fixture(scope="module")
def engine(cloud_lm):
    srv = ReferenceEngine(cloud_lm.model, cloud_lm.tokenizer, "tiny-large", api_key="engine-key").start()
    yield srv
    srv.stop()


def test_topk_logprobs_round_trip_over_http(engine, cloud_lm):
    client = EngineClient(EngineConfig(engine.url, "tiny-large", api_key="engine-key"), cloud_lm.tokenizer,
                          cloud_lm.vocab_size)
    seq = [1, 500, 900, 1300, 77]
    try:
        one = client.score(seq, 1, 8)  # no echo: the distribution after the whole sequence
        three = client.score(seq, 3, 8)  # echo: after seq[:3], seq[:4] and seq
        with torch.inference_mode():
            full = torch.log_softmax(cloud_lm.model(input_ids=torch.tensor([seq])).logits[0].float(), -1)
        for got, want in ((one[0], full[-1]), (three[0], full[2]), (three[1], full[3]), (three[2], full[4])):
            vals, ids = torch.topk(want, 8)
            assert torch.equal(torch.topk(got, 8).indices, ids)
            assert torch.allclose(got[ids], vals, atol=1e-5)
            assert abs(float(got.exp().sum()) - 1.0) < 1e-3  # the rest of the mass is spread, not lost
        assert client.generate(seq, 4, frozenset()) == [int(torch.argmax(full[-1]))] + client.generate(
            seq + [int(torch.argmax(full[-1]))], 3, frozenset())
        bad = EngineClient(EngineConfig(engine.url, "tiny-large", api_key="wrong"), cloud_lm.tokenizer, 10)
        with pytest.raises(EngineError, match="HTTP 401"):
            bad.score(seq, 1, 4)
        bad.close()
    finally:
        client.close()


def test_cloud_on_the_engine_backend_keeps_the_contract_and_the_tokens(engine, cloud_lm):
    device_lm = load_model("tiny")
    common = dict(model="tiny-large", insecure=True, token="device-token", sketch_max_new_tokens=8)
    native = start_cloud_server(CloudConfig(**common), lm=cloud_lm)
    backed = start_cloud_server(CloudConfig(**common, engine_url=engine.url, engine_model="tiny-large",
                                            engine_api_key="engine-key"), lm=cloud_lm)
    answers = {}
    try:
        before = engine.requests
        for name, srv in (("native", native), ("engine", backed)):
            for draft in (0, 4):
                dev = CogenDevice(DeviceConfig(device_model="tiny", cloud=srv.address, insecure=True,
                                               token="device-token", k=16, max_new_tokens=12, draft_tokens=draft,
                                               draft_min_p=0.0), device_lm=device_lm)
                try:
                    answers[name, draft] = dev.generate(INSTRUCTION, CONTEXT, "logit")
                    if draft == 0:
                        answers[name, "sketch"] = dev.generate(INSTRUCTION, CONTEXT, "sketch")
                finally:
                    dev.close()
        assert engine.requests > before  # the engine did the work
        assert answers["engine", 0].token_ids == answers["native", 0].token_ids
        assert answers["engine", 4].token_ids == answers["native", 0].token_ids
        assert answers["engine", "sketch"].sketch == answers["native", "sketch"].sketch
        assert not any(a.fell_back for a in answers.values())
        intruder = CloudClient(backed.address, insecure=True, token="wrong")  # auth is unchanged
        with pytest.raises(CloudRefused) as err:
            intruder.sketch(INSTRUCTION, 4, timeout=10)
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
        intruder.close()
        too_big = CloudClient(backed.address, insecure=True, token="device-token")
        s = too_big.open_session(INSTRUCTION, k=64)  # above the engine's max_logprobs (20)
        with pytest.raises(CloudRefused, match="k must be in"):
            s.latest()
        too_big.close()
    finally:
        native.stop(grace=1)
        backed.stop(grace=1)


def test_an_engine_without_prompt_logprobs_scores_drafts_per_position(engine, cloud_lm, monkeypatch):
    """llama.cpp's server returns no prompt log-probs for echo: the backend falls back to one request per
    draft position and gets the same distributions."""
    client = EngineClient(EngineConfig(engine.url, "tiny-large", api_key="engine-key"), cloud_lm.tokenizer,
                          cloud_lm.vocab_size)
    seq = [1, 500, 900, 1300, 77]
    try:
        with_echo = client.score(seq, 3, 8)
        real = engine.complete
        monkeypatch.setattr(engine, "complete", lambda body: real({**body, "echo": False}))
        without = client.score(seq, 3, 8)
        assert not client.echo_ok
    finally:
        client.close()
    assert torch.allclose(with_echo, without, atol=1e-5)


class _TextOnlyEngine:
    """Answers like llama-cpp-python's server: text prompts only (422 for token ids), text log-prob keys with
    control tokens rendered as "", ``usage.prompt_tokens`` from its own tokenizer."""

    def __init__(self, tokenizer, rows, extra_prompt_tokens: int = 0, blank_is_end: bool = True) -> None:
        self.tokenizer, self.rows, self.extra, self.blank_is_end = tokenizer, rows, extra_prompt_tokens, blank_is_end
        self.bodies: list[dict] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        if not isinstance(body["prompt"], str):
            return httpx.Response(422, json={"detail": [{"loc": ["body", "prompt"], "msg": "Input should be a valid "
                                                         "string"}]})
        n = len(self.tokenizer(body["prompt"], add_special_tokens=False)["input_ids"]) + self.extra
        if "logprobs" not in body and "logit_bias" in body:  # what "" is: greedy stops at once on an end token
            end = self.blank_is_end
            return httpx.Response(200, json={"choices": [{"text": "" if end else "\u00f0", "logprobs": None,
                                                          "finish_reason": "stop" if end else "length"}]})
        return httpx.Response(200, json={"choices": [{"text": " the end", "logprobs": {
            "tokens": [" the"], "top_logprobs": self.rows if body.get("echo") else self.rows[-1:]}}], "usage": {"prompt_tokens": n, "completion_tokens": 1}})


def _mocked(cfg: EngineConfig, tokenizer, handler) -> EngineClient:
    client = EngineClient(cfg, tokenizer, 49152)
    client.http.close()
    client.http = httpx.Client(base_url="http://engine.test/v1", transport=httpx.MockTransport(handler))
    return client


def test_llama_cpp_flavour_sends_text_and_reads_text_keys():
    tok = load_model("tiny").tokenizer
    the = tok(" the", add_special_tokens=False)["input_ids"][0]
    engine = _TextOnlyEngine(tok, [{" the": -0.5, "": -1.5, "\u00e9t\u00e9 multi words": -4.0}])
    client = _mocked(EngineConfig("http://engine.test/v1", "smollm2", flavour="llama-cpp-python"), tok, engine)
    seq = [1, 500, 900, 2, 198]  # special tokens inside: they must reach the engine as their text
    row = client.score(seq, 1, 3)[0]
    body = engine.bodies[0]  # the scoring request (a probe follows it)
    assert body["prompt"] == tok.decode(seq, skip_special_tokens=False)
    assert body["repeat_penalty"] == 1.0  # its default 1.1 would change greedy tokens
    assert body["logit_bias"] == {str(i): -100.0 for i in tok.all_special_ids}  # never stop before reporting
    assert not client.echo_ok  # its echo is slower than per-position requests: off by default
    assert row[the] == pytest.approx(-0.5) and row[tok.eos_token_id] == pytest.approx(-1.5)  # "" = end of turn
    probe = engine.bodies[-1]  # "" was resolved by one more request with the tokens above it biased away
    assert probe["logit_bias"] == {str(the): -100.0} and "logprobs" not in probe and client.blank_probes == 1
    assert client.unmapped_keys == 1  # the multi-token text is dropped, not guessed
    assert torch.topk(row, 2).indices.tolist() == [the, tok.eos_token_id]
    engine.blank_is_end = False  # "" was the first byte of an emoji: dropped, not read as the end of turn
    row = client.score(seq, 1, 3)[0]
    assert row[tok.eos_token_id] < -4.0 and client.unmapped_keys == 3 and client.blank_probes == 2
    engine.rows = [{"": -0.9}]  # the whole top-k collapsed into "" (emoji bytes): a flat row, the device decides
    row = client.score(seq, 1, 3)[0]
    assert client.empty_rows == 1 and torch.allclose(row, torch.full_like(row, row[0])) and row[0] < -10
    assert client.generate(seq, 8, frozenset()) == tok(" the end", add_special_tokens=False)["input_ids"]
    assert "logit_bias" not in engine.bodies[-1] and "logprobs" not in engine.bodies[-1]  # a sketch: text only
    client.close()
    forced = _mocked(EngineConfig("http://engine.test/v1", "smollm2", flavour="llama-cpp-python", echo=True), tok,
                     engine)
    assert forced.echo_ok  # --engine-echo overrides the flavour's default
    forced.close()


def test_engine_flags_parse():
    args = build_parser().parse_args(["cloud", "serve", "--insecure", "--engine-url", "http://127.0.0.1:9/v1",
                              "--engine-model", "smollm2", "--engine-flavour", "llama-cpp-python", "--no-engine-echo"])
    assert (args.engine_flavour, args.engine_echo) == ("llama-cpp-python", False)


def test_llama_cpp_flavour_never_uses_echo_rows_of_a_prompt_the_engine_tokenizes_differently():
    """A device's tokens need not be the canonical tokenisation of their text: the engine then reads other
    tokens. The distribution after the text is still right, echo rows would not line up: per position."""
    tok = load_model("tiny").tokenizer
    engine = _TextOnlyEngine(tok, [None, {" the": -0.5}, {" the": -0.7}, {" the": -0.9}], extra_prompt_tokens=1)
    client = _mocked(EngineConfig("http://engine.test/v1", "smollm2", flavour="llama-cpp-python", echo=True), tok,
                     engine)
    seq = [1, 500, 900, 1300, 77]
    rows = client.score(seq, 3, 4)
    assert [b.get("echo") for b in engine.bodies] == [True, None, None, None]  # echo tried, then per position
    assert [b["prompt"] for b in engine.bodies[1:]] == [tok.decode(seq[:j], skip_special_tokens=False)
                                                         for j in (3, 4, 5)]
    assert client.retokenized == 4 and client.echo_ok  # counted; echo stays on for sequences that line up
    assert rows.shape[0] == 3
    client.close()


def test_an_openai_flavour_cloud_on_a_text_only_engine_names_the_flavour_to_use():
    tok = load_model("tiny").tokenizer
    client = _mocked(EngineConfig("http://engine.test/v1", "smollm2"), tok, _TextOnlyEngine(tok, [{" the": -0.5}]))
    with pytest.raises(EngineError, match="HTTP 422.*--engine-flavour llama-cpp-python"):
        client.score([1, 500], 1, 4)
    client.close()
    with pytest.raises(ValueError, match="flavour must be one of openai, llama-cpp-python"):
        EngineConfig("http://x/v1", "m", flavour="ollama").validate()
    with pytest.raises(ValueError, match="--engine-flavour must be one of"):
        CloudConfig(model="tiny-large", insecure=True, engine_url="http://x/v1", engine_model="m",
                    engine_flavour="ollama").validate()
