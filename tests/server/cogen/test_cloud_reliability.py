"""Bounded waits and clean teardown of the CoGenesis cloud (issue #12 A and D).

Integration tests use the real cloud on loopback with the tiny model; the batcher and watchdog
unit tests drive one component with a stand-in model.
"""

from __future__ import annotations

import dataclasses
import io
import queue
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import grpc
import pytest
import torch

from fedcogen import exit_watchdog
from fedcogen.client.cogen.cloud_client import CloudClient
from fedcogen.models import load_model
from fedcogen.protocols import cogen_pb2 as pb
from fedcogen.protocols.codecs import logit_codec
from fedcogen.server.cogen.cloud_batcher import BatcherStopped, DynamicBatcher, Session, SessionClosed, Work
from fedcogen.server.cogen.cloud_service import CloudConfig, start_cloud_server
from fedcogen.server.cogen.kv_slots import SessionKV

INSTRUCTION = "Write a short note to my landlord about the broken heater."


@pytest.fixture(scope="module")
def cloud_lm():
    return load_model("tiny-large")


class _SlowModel:
    """The real model, each forward delayed by ``delay`` seconds (a congested cloud)."""

    def __init__(self, model, delay: float) -> None:
        self.model, self.delay, self.config, self.dtype = model, delay, model.config, model.dtype
        self.set_attn_implementation = model.set_attn_implementation

    def __call__(self, *args, **kwargs):
        time.sleep(self.delay)
        return self.model(*args, **kwargs)


def _open_request() -> pb.DecodeRequest:
    return pb.DecodeRequest(
        open=pb.SessionOpen(protocol_version=logit_codec.PROTOCOL_VERSION, instruction=INSTRUCTION, k=4, encoding=pb.FP16)
    )


def _raw_stream(address: str):
    """A Decode stream with no client deadline, fed from a queue-like list of requests."""
    channel = grpc.insecure_channel(address)
    stub_call = channel.stream_stream(
        "/fedcogen.cogen.v1.CloudLM/Decode",
        request_serializer=pb.DecodeRequest.SerializeToString,
        response_deserializer=pb.DecodeReply.FromString,
    )
    requests: queue.Queue = queue.Queue()

    def feed():
        while True:  # bounded gets: the pump ends with the test even if "end" is never sent
            try:
                item = requests.get(timeout=0.2)
            except queue.Empty:
                if channel_closed.is_set():
                    return
                continue
            if item == "end":
                return
            yield item

    channel_closed = threading.Event()
    send = requests.put
    call = stub_call(feed())
    call.add_done_callback(lambda _c: channel_closed.set())
    return channel, call, send


def test_decode_step_after_shutdown_fails_fast(cloud_lm):
    srv = start_cloud_server(CloudConfig(model="tiny-large", insecure=True), lm=cloud_lm)
    channel, call, send = _raw_stream(srv.address)
    try:
        send(_open_request())
        first = next(call)
        assert first.HasField("logits")
        srv.service.shutdown()  # the batcher is gone but the stream is still open
        t0 = time.monotonic()
        send(pb.DecodeRequest(step=pb.TokenStep(token_ids=[5])))
        with pytest.raises(grpc.RpcError) as err:
            next(call)
        assert time.monotonic() - t0 < 1.0
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in err.value.details()
    finally:
        send("end")
        channel.close()
        srv.stop(grace=0.5)


def test_step_without_client_deadline_is_bounded_by_server_step_timeout(cloud_lm):
    slow = dataclasses.replace(cloud_lm, model=_SlowModel(cloud_lm.model, delay=3.0))
    srv = start_cloud_server(CloudConfig(model="tiny-large", insecure=True, step_timeout_s=0.5), lm=slow)
    channel, call, send = _raw_stream(srv.address)
    try:
        t0 = time.monotonic()
        send(_open_request())  # the prefill takes 3 s, the server waits at most 0.5 s
        with pytest.raises(grpc.RpcError) as err:
            next(call)
        assert time.monotonic() - t0 < 2.5
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "step timeout" in err.value.details()
    finally:
        send("end")
        channel.close()
        srv.stop(grace=0.5)


def test_stopped_cloud_leaves_no_request_pump_behind(cloud_lm):
    srv = start_cloud_server(CloudConfig(model="tiny-large", insecure=True), lm=cloud_lm)
    client = CloudClient(srv.address, insecure=True)
    session = client.open_session(INSTRUCTION, k=4)
    session.latest()
    srv.kill()
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline and _threads_in("_outgoing"):
        time.sleep(0.1)
    client.close()
    assert not _threads_in("_outgoing"), "the Decode request pump still waits for requests after the stream ended"


def _threads_in(function: str) -> list[str]:
    names = {t.ident: t.name for t in threading.enumerate()}
    found = []
    for ident, frame in sys._current_frames().items():
        f = frame
        while f is not None:
            if f.f_code.co_name == function:
                found.append(names.get(ident, str(ident)))
                break
            f = f.f_back
    return found


# ----------------------------------------------------------------------------- batcher (unit)
class _BlockingModel:
    """Stands in for the model: blocks in forward until released; calls ``during`` while inside."""

    config = SimpleNamespace(num_hidden_layers=1, num_key_value_heads=1, num_attention_heads=1, hidden_size=2,
                             head_dim=2)
    dtype = torch.float32

    def __init__(self, during=None) -> None:
        self.entered, self.release, self.during = threading.Event(), threading.Event(), during

    def __call__(self, input_ids, past_key_values, position_ids, use_cache, **_):
        self.entered.set()
        if self.during is not None:
            self.during()
        self.release.wait(5)
        n = input_ids.shape[1]
        past_key_values.update(torch.zeros(1, 1, n, 2), torch.zeros(1, 1, n, 2), 0)
        return SimpleNamespace(logits=torch.zeros(1, n, 8), past_key_values=past_key_values)


def _session(sid: str = "s1") -> Session:
    return Session(sid, k=4, encoding=pb.FP16, max_tokens=16)


def test_batcher_refuses_after_stop_and_fails_queued_and_running_steps():
    model = _BlockingModel()
    batcher = DynamicBatcher(model, window_ms=0.0, max_batch=1)
    running, queued = Work(_session("a"), [1, 2], None), Work(_session("b"), [3], None)
    batcher.submit(running)
    assert model.entered.wait(5)
    batcher.submit(queued)
    batcher.stop(timeout=0.2)  # the running forward outlives the join: it is failed too
    assert queued.done.is_set() and isinstance(queued.error, BatcherStopped)
    assert running.done.is_set() and isinstance(running.error, BatcherStopped)
    late = Work(_session("c"), [4], None)
    t0 = time.monotonic()
    batcher.submit(late)
    assert late.done.wait(0.1) and isinstance(late.error, BatcherStopped)
    assert time.monotonic() - t0 < 0.1
    model.release.set()


def test_release_during_forward_defers_freeing_the_cache_until_the_batch_ends():
    session = _session()
    session.kv = SessionKV(1, 1, 2, capacity=4)
    session.kv.length = 3
    seen: list[object] = []

    def reaper_fires() -> None:  # the idle reaper ends the session while its step is running
        session.release()
        seen.append(session.kv)

    model = _BlockingModel(during=reaper_fires)
    model.release.set()
    batcher = DynamicBatcher(model, window_ms=0.0)
    try:
        work = Work(session, [7], None)
        batcher.submit(work)
        assert work.done.wait(5)
        assert work.error is None and work.logits is not None  # the batch did not fail
        assert seen and seen[0] is not None  # the cache stayed intact while the forward ran
        deadline = time.monotonic() + 2
        while session.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        assert session.kv is None  # ... and was freed right after the batch
        after = Work(session, [8], None)
        batcher.submit(after)
        assert after.done.wait(5) and isinstance(after.error, SessionClosed)
    finally:
        batcher.stop()


# ----------------------------------------------------------------------------- exit watchdog
def test_watchdog_names_and_shows_live_non_daemon_threads():
    gate = threading.Event()
    stuck = threading.Thread(target=gate.wait, name="stuck-rpc-handler", daemon=False)
    harmless = threading.Thread(target=gate.wait, name="harmless-daemon", daemon=True)
    stuck.start()
    harmless.start()
    try:
        blocking = exit_watchdog.blocking_threads()
        assert stuck in blocking and harmless not in blocking
        report = exit_watchdog.format_threads(blocking)
        assert "stuck-rpc-handler" in report and "harmless-daemon" not in report
        assert "in wait" in report  # the stack shows where it is stuck

        out, codes = io.StringIO(), []
        exit_watchdog.arm(0.05, stream=out, exit_fn=codes.append)
        deadline = time.monotonic() + 5
        while not codes and time.monotonic() < deadline:
            time.sleep(0.01)
        assert codes == [1]
        assert "stuck-rpc-handler" in out.getvalue() and "still alive" in out.getvalue()
    finally:
        gate.set()
        stuck.join(5)
    assert exit_watchdog.format_threads([]) == "no live non-daemon threads\n"


def test_grpc_worker_pool_does_not_block_interpreter_exit():
    code = (
        "import threading\n"
        "from fedcogen.server.cogen.daemon_pool import DaemonThreadPool\n"
        "pool = DaemonThreadPool(2, 'cogen-rpc')\n"
        "f = pool.submit(threading.Event().wait)\n"  # a handler blocked forever
        "assert pool.submit(lambda: 41 + 1).result(5) == 42\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], timeout=30, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_packed_forward_of_unequal_sessions_matches_single_decoding_without_copies():
    """One packed forward serves sessions of different lengths (prefills, steps, drafts, rewinds):
    every distribution equals decoding that session alone, and a step writes the cache in place."""
    from fedcogen.client.cogen.incremental_lm import IncrementalLM

    model = load_model("tiny").model
    batcher = DynamicBatcher(model, window_ms=0.0, max_batch=8, prefill_chunk=3)
    ref_model = load_model("tiny").model  # stock SDPA + DynamicCache reference
    try:
        prompts = {"a": [5, 6, 7, 8, 9, 10, 11], "b": [9, 10], "c": [11, 12, 13]}
        sessions = {k: _session(k) for k in prompts}
        refs = {k: IncrementalLM(ref_model) for k in prompts}
        works = {k: Work(sessions[k], p, None) for k, p in prompts.items()}
        batcher._run(list(works.values()))  # "a" is longer than a chunk: it goes in pieces
        while batcher._carry:  # the scheduler's next ticks
            batcher._run(list(batcher._carry))
        for k, p in prompts.items():
            assert torch.allclose(works[k].logits.log_softmax(-1), refs[k].prefill(p), atol=1e-4)
        buffers = {k: s.kv.k for k, s in sessions.items()}

        def step(keys, token):
            ws = [Work(sessions[k], [token], None) for k in keys]
            batcher._run(ws)
            for k, w in zip(keys, ws, strict=True):
                assert w.error is None
                assert torch.allclose(w.logits.log_softmax(-1), refs[k].step([token]), atol=1e-4), (k, token)

        step(["a", "b", "c"], 21)
        step(["a", "b"], 22)
        step(["c"], 23)
        assert all(sessions[k].kv.k is buffers[k] for k in prompts)  # written in place, no new cache
        draft = Work(sessions["b"], [30, 31, 32], None, score=3)  # a scored draft next to a plain step
        plain = Work(sessions["c"], [24], None)
        batcher._run([draft, plain])
        assert draft.logits.shape[0] == 3
        assert torch.allclose(plain.logits.log_softmax(-1), refs["c"].step([24]), atol=1e-4)
        refs["b"].step([30])
        back = Work(sessions["b"], [40], None, rewind=2)  # keep 30, drop 31 32
        batcher._run([back])
        assert torch.allclose(back.logits.log_softmax(-1), refs["b"].step([40]), atol=1e-4)
        sessions["a"].release()
        assert sessions["a"].kv is None
    finally:
        batcher.stop()


def test_long_prefill_does_not_stall_another_sessions_step():
    """A 2,000-token prompt is run in chunks between other sessions' steps: a short session's step
    submitted mid-prefill is answered within a couple of scheduler ticks, long before the prefill ends."""
    batcher = DynamicBatcher(load_model("tiny-large").model, window_ms=0.0, max_batch=8, prefill_chunk=32)
    try:
        short, long_ = _session("short"), _session("long")
        first = Work(short, [5, 6, 7], None)
        batcher.submit(first)
        assert first.done.wait(30) and first.error is None
        prefill = Work(long_, [100 + i for i in range(2000)], None)
        t0 = time.monotonic()
        batcher.submit(prefill)
        deadline = time.monotonic() + 30
        while prefill.fed == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert 0 < prefill.fed < 2000  # the prefill is under way
        step, ticks, ts = Work(short, [8], None), batcher.ticks, time.monotonic()
        batcher.submit(step)
        assert step.done.wait(30) and step.error is None
        waited, ticks_waited = time.monotonic() - ts, batcher.ticks - ticks
        assert not prefill.done.is_set()  # answered while the long prompt was still being read
        assert prefill.done.wait(120) and prefill.error is None
        whole = time.monotonic() - t0
        assert ticks_waited <= 3  # the bound: the next tick or so, never the rest of the prefill
        assert waited < whole / 5
    finally:
        batcher.stop()
