"""CoGenesis over real gRPC on loopback: tiny device model ('tiny') and tiny cloud ('tiny-large')."""

from __future__ import annotations

import threading

import grpc
import pytest
import torch

from fedcogen.client.cogen.cloud_client import CloudClient, CloudRefused, CloudUnavailable
from fedcogen.client.cogen.cogen_device import CogenDevice, DeviceConfig
from fedcogen.client.cogen.fusion import fuse_logprobs
from fedcogen.client.cogen.incremental_lm import IncrementalLM
from fedcogen.client.cogen.wire_capture import WireCapture
from fedcogen.models import chat_input_ids, load_model
from fedcogen.prompts import CLOUD_SYSTEM, cloud_prompt
from fedcogen.protocols import cogen_pb2 as pb
from fedcogen.protocols.codecs import logit_codec
from fedcogen.protocols.security import tls
from fedcogen.server.cogen.cloud_service import CloudConfig, start_cloud_server

INSTRUCTION = "Write a short note to my landlord about the broken heater."
CANARY = "CANARY-7f3a9c1e"
CONTEXT = f"My name is Zorblax Quibbleton, I live at 17 Quux Lane, flat 4B. Door code {CANARY}."
N_TOKENS = 12


@pytest.fixture(scope="module")
def cloud_lm():
    return load_model("tiny-large")


@pytest.fixture(scope="module")
def server(cloud_lm):
    srv = start_cloud_server(
        CloudConfig(model="tiny-large", insecure=True, max_message_bytes=64 * 1024, sketch_max_new_tokens=16),
        lm=cloud_lm,
    )
    yield srv
    srv.stop(grace=1)


def make_device(device_lm, address, **kw) -> CogenDevice:
    cfg = DeviceConfig(device_model="tiny", cloud=address, insecure=True, max_new_tokens=N_TOKENS, **kw)
    return CogenDevice(cfg, device_lm=device_lm)


def test_sketch_and_logit_round_trip(server, device_lm):
    dev = make_device(device_lm, server.address)
    try:
        sk = dev.generate(INSTRUCTION, CONTEXT, "sketch")
        assert sk.cloud_calls == 1 and sk.sketch is not None and not sk.fell_back
        assert sk.bytes_sent > 0 and sk.bytes_received > 0
        lg = dev.generate(INSTRUCTION, CONTEXT, "logit")
        assert lg.tokens == N_TOKENS and lg.cloud_calls == N_TOKENS and lg.cloud_call_fraction == 1.0
        assert not lg.fell_back and lg.text
        # k=64 fp16: a few hundred bytes per token, far below the 196 KB of a full fp32 vocabulary
        assert lg.bytes_received / lg.tokens < 1024
    finally:
        dev.close()


def test_fused_distribution_equals_in_process_formula(server, device_lm, cloud_lm):
    w, k = 0.3, 32
    # repetition control off: this checks the fusion formula alone
    dev = make_device(device_lm, server.address, weight=w, k=k, repetition_penalty=1.0, no_repeat_ngram=0)
    try:
        result = dev.generate(INSTRUCTION, CONTEXT, "logit")
    finally:
        dev.close()
    # Recompute the same greedy fusion in-process: device with context, cloud with instruction only.
    small, large = IncrementalLM(device_lm.model), IncrementalLM(cloud_lm.model)
    lp_s = small.prefill(dev.device_ids(INSTRUCTION, CONTEXT))
    lp_l = large.prefill(chat_input_ids(cloud_lm.tokenizer, cloud_prompt(INSTRUCTION), system=CLOUD_SYSTEM))
    expected = []
    for _ in range(N_TOKENS):
        cloud_lp = logit_codec.decode(logit_codec.encode(lp_l, k, "fp16"), cloud_lm.vocab_size)
        fused = fuse_logprobs(lp_s, cloud_lp, w)
        tok = int(fused.argmax())
        expected.append(tok)
        lp_s, lp_l = small.step([tok]), large.step([tok])
    assert result.token_ids == expected

    # And one packet straight off the wire equals the in-process encoding of the same prefix.
    client = CloudClient(server.address, insecure=True)
    try:
        session = client.open_session(INSTRUCTION, k=k, encoding="fp32")
        session.send_step(expected[:3])
        wire = logit_codec.decode(session.latest(), cloud_lm.vocab_size)
        session.close()
    finally:
        client.close()
    ref = IncrementalLM(cloud_lm.model)
    ref.prefill(chat_input_ids(cloud_lm.tokenizer, cloud_prompt(INSTRUCTION), system=CLOUD_SYSTEM))
    local = logit_codec.decode(logit_codec.encode(ref.step(expected[:3]), k, "fp32"), cloud_lm.vocab_size)
    assert torch.allclose(wire, local, atol=1e-4)


def test_topk_with_k_equal_vocab_matches_full_logits(server, device_lm, cloud_lm):
    v = cloud_lm.vocab_size
    outs = {}
    for name, (k, enc) in {"topk": (v, "fp32"), "full": (64, "full")}.items():
        dev = make_device(device_lm, server.address, k=k, encoding=enc)
        try:
            outs[name] = dev.generate(INSTRUCTION, CONTEXT, "logit")
        finally:
            dev.close()
    assert outs["topk"].token_ids == outs["full"].token_ids
    assert outs["full"].bytes_received / N_TOKENS > v * 4  # the baseline really ships the whole vocabulary


def test_gated_catch_up_equals_token_by_token(server, cloud_lm):
    toks = [100, 2000, 300, 4000, 55]
    client = CloudClient(server.address, insecure=True)
    try:
        one = client.open_session(INSTRUCTION, k=128, encoding="fp32")
        for t in toks:
            one.send_step([t])
            last_one = logit_codec.decode(one.latest())
        one.close()
        batch = client.open_session(INSTRUCTION, k=128, encoding="fp32")
        batch.send_step(toks)  # one catch-up message with several committed tokens
        last_batch = logit_codec.decode(batch.latest())
        stats = batch.close()
    finally:
        client.close()
    assert torch.allclose(last_one, last_batch, atol=1e-4)
    assert stats is not None and stats.generated_tokens == len(toks) and stats.steps == 2


def test_gated_thresholds_bracket_device_and_logit(server, device_lm):
    always = make_device(device_lm, server.address, gated_threshold=-1.0)
    never = make_device(device_lm, server.address, gated_threshold=1e9)
    try:
        g_all = always.generate(INSTRUCTION, CONTEXT, "gated")
        lg = always.generate(INSTRUCTION, CONTEXT, "logit")
        g_none = never.generate(INSTRUCTION, CONTEXT, "gated")
        dv = never.generate(INSTRUCTION, CONTEXT, "device")
    finally:
        always.close()
        never.close()
    assert g_all.token_ids == lg.token_ids and g_all.cloud_call_fraction == 1.0
    assert g_none.token_ids == dv.token_ids and g_none.cloud_calls == 0


def test_private_context_never_crosses_the_wire(server, device_lm):
    capture = WireCapture()
    dev = CogenDevice(
        DeviceConfig(device_model="tiny", cloud=server.address, insecure=True, max_new_tokens=N_TOKENS),
        device_lm=device_lm,
        capture=capture,
    )
    try:
        for variant in ("sketch", "logit", "gated", "cloud"):
            dev.generate(INSTRUCTION, CONTEXT, variant)
    finally:
        dev.close()
    assert capture.contains(INSTRUCTION)  # the audit sees what was sent ...
    methods = {r.method.rsplit("/", 1)[-1] for r in capture.records}
    assert {"Sketch", "Decode"} <= methods
    for secret in (CANARY, "Zorblax", "Quibbleton", "Quux Lane", CONTEXT):
        assert not capture.contains(secret), secret  # ... and the context is not in it
    canary_ids = device_lm.tokenizer(CANARY, add_special_tokens=False)["input_ids"]
    assert not capture.contains_token_run(canary_ids)


def test_wire_capture_detects_context_in_eval_only_upper_bound(cloud_lm, device_lm):
    srv = start_cloud_server(
        CloudConfig(model="tiny-large", insecure=True, allow_eval_only_context=True, eval_max_new_tokens=4),
        lm=cloud_lm,
    )
    capture = WireCapture()
    dev = CogenDevice(
        DeviceConfig(device_model="tiny", cloud=srv.address, insecure=True, max_new_tokens=4),
        device_lm=device_lm,
        capture=capture,
    )
    try:
        res = dev.generate(INSTRUCTION, CONTEXT, "cloud_with_context")
        assert res.cloud_calls == res.tokens + (res.tokens < 4)  # one cloud distribution per position
        assert res.cloud_call_fraction == 1.0
        assert capture.contains(CANARY)  # the detector can fail: this variant leaks by design
    finally:
        dev.close()
        srv.stop(grace=0.5)


def test_eval_only_generate_is_refused_by_default(server):
    client = CloudClient(server.address, insecure=True)
    try:
        with pytest.raises(CloudRefused, match="allow-eval-only-context") as err:
            client.eval_only_generate(CONTEXT, 4)
        assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
    finally:
        client.close()


def test_protocol_version_mismatch_is_a_clear_error(server):
    client = CloudClient(server.address, insecure=True)
    try:
        session = client.open_session(INSTRUCTION, protocol_version=99)
        with pytest.raises(CloudRefused) as err:
            session.latest()
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "v99" in str(err.value) and f"v{logit_codec.PROTOCOL_VERSION}" in str(err.value)
    finally:
        client.close()


def _raw_decode(address: str, payloads: list[bytes]):
    channel = grpc.insecure_channel(address)
    call = channel.stream_stream(
        "/fedcogen.cogen.v1.CloudLM/Decode", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    try:
        return list(call(iter(payloads), timeout=20))
    finally:
        channel.close()


def test_malformed_and_oversized_messages_get_clean_errors(server, device_lm):
    with pytest.raises(grpc.RpcError) as err:
        _raw_decode(server.address, [b"\xff\xff\xff\xff garbage"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    bad_step = pb.DecodeRequest(step=pb.TokenStep(token_ids=[1])).SerializeToString()
    with pytest.raises(grpc.RpcError) as err:
        _raw_decode(server.address, [bad_step])  # step before open
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    client = CloudClient(server.address, insecure=True)
    try:
        s = client.open_session(INSTRUCTION, k=8)
        s.latest()
        s.send_step([10**6])  # outside the vocabulary
        with pytest.raises(CloudRefused, match="outside vocabulary") as err:
            s.latest()
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT

        huge = client.open_session("x " * 100_000, k=8)  # ~200 KB > 64 KB limit
        with pytest.raises(CloudUnavailable) as err:
            huge.latest()
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        client.close()
    # the server keeps serving others
    dev = make_device(device_lm, server.address)
    try:
        assert dev.generate(INSTRUCTION, CONTEXT, "logit").tokens == N_TOKENS
    finally:
        dev.close()


def test_sixteen_concurrent_sessions_are_independent_and_batched(server, device_lm):
    instructions = [f"Write note number {i} about topic {i * 7}." for i in range(16)]
    single = {}
    dev = make_device(device_lm, server.address)
    try:
        for i, ins in enumerate(instructions):
            single[i] = dev.generate(ins, CONTEXT, "logit" if i % 2 else "cloud").token_ids
    finally:
        dev.close()
    batches_before = server.service.batcher.batches
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(16)

    def worker(i: int) -> None:
        d = make_device(device_lm, server.address)
        try:
            barrier.wait()
            results[i] = d.generate(instructions[i], CONTEXT, "logit" if i % 2 else "cloud").token_ids
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            d.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not errors, errors
    assert results == single
    assert len({tuple(v) for v in results.values()}) >= 4  # different prompts -> different outputs
    assert server.service.batcher.batches > batches_before  # steps of different sessions shared forwards


def test_session_limits(cloud_lm):
    srv = start_cloud_server(
        CloudConfig(model="tiny-large", insecure=True, max_sessions=1, max_tokens_per_session=3, idle_timeout_s=0.4),
        lm=cloud_lm,
    )
    client = CloudClient(srv.address, insecure=True)
    try:
        first = client.open_session(INSTRUCTION, k=4)
        first.latest()
        second = client.open_session(INSTRUCTION, k=4)
        with pytest.raises(CloudUnavailable, match="session limit") as err:
            second.latest()
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        first.send_step([1, 2, 3, 4])
        with pytest.raises(CloudUnavailable, match="limit of 3"):
            first.latest()
        idle = client.open_session(INSTRUCTION, k=4)
        idle.latest()
        threading.Event().wait(1.5)  # longer than the idle timeout: the reaper closes the session
        assert srv.service.active_sessions() == 0
        idle.send_step([5])
        with pytest.raises(CloudUnavailable):
            idle.latest()
    finally:
        client.close()
        srv.stop(grace=0.5)


def test_tls_and_token_refuse_bad_calls(cloud_lm, tmp_path):
    tls.ensure_dev_certs(tmp_path)
    srv = start_cloud_server(
        CloudConfig(model="tiny-large", tls_dir=str(tmp_path), token="s3cret", sketch_max_new_tokens=4), lm=cloud_lm
    )
    try:
        ok = CloudClient(srv.address, tls_dir=str(tmp_path), token="s3cret")
        reply = ok.sketch(INSTRUCTION, timeout=30)
        assert reply.generated_tokens == 4  # the right token is served the whole sketch, up to the cap of 4
        assert ok.health()
        ok.close()
        for token in (None, "wrong"):
            bad = CloudClient(srv.address, tls_dir=str(tmp_path), token=token)
            with pytest.raises(CloudRefused) as err:
                bad.sketch(INSTRUCTION, timeout=30)
            assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
            session = bad.open_session(INSTRUCTION, k=4)
            with pytest.raises(CloudRefused) as err:
                session.latest()
            assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
            bad.close()
        plain = CloudClient(srv.address, insecure=True, token="s3cret")
        with pytest.raises(CloudUnavailable) as err:
            plain.sketch(INSTRUCTION, timeout=10)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        plain.close()
    finally:
        srv.stop(grace=0.5)
    with pytest.raises(ValueError, match="--insecure"):
        start_cloud_server(CloudConfig(model="tiny-large"), lm=cloud_lm)
    with pytest.raises(ValueError, match="--token"):
        start_cloud_server(CloudConfig(model="tiny-large", tls_dir=str(tmp_path)), lm=cloud_lm)
