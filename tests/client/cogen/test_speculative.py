"""Speculative collaboration over real gRPC on loopback (tiny device, tiny-large cloud): exactly the
tokens of per-token greedy fusion, fewer round trips, rewinds that the cloud honours."""

from __future__ import annotations

import pytest
import torch

from fedcogen.client.cogen.batch_lm import BatchLM
from fedcogen.client.cogen.cloud_client import CloudClient, CloudRefused
from fedcogen.client.cogen.cogen_device import CogenDevice, DeviceConfig
from fedcogen.models import load_model
from fedcogen.protocols.codecs import logit_codec

INSTRUCTIONS = [
    "Write a short note to my landlord about the broken heater.",
    "Write a birthday message to my sister.",
    "Ask my manager to move our Friday meeting.",
]
CONTEXTS = [
    "Landlord: Mr. Osei. Flat 4B, heater broken since Monday.",
    "Sister: Mira, turning 30 on Saturday, loves hiking.",
    "Manager: Dana. Friday 10:00 one-to-one; dentist appointment.",
]
N_TOKENS = 20


def _run(device_lm, address, items, **kw):
    cfg = DeviceConfig(device_model="tiny", cloud=address, insecure=True, max_new_tokens=N_TOKENS, **kw)
    dev = CogenDevice(cfg, device_lm=device_lm)
    try:
        return dev.generate_batch(items, "logit")
    finally:
        dev.close()


@pytest.mark.parametrize("weight", [0.5, 0.8])
def test_speculative_equals_per_token_fusion_token_for_token(server, device_lm, weight):
    items = list(zip(INSTRUCTIONS, CONTEXTS, strict=True))
    per_token = [_run(device_lm, server.address, [it], draft_tokens=0, weight=weight)[0] for it in items]
    for n in (1, 4, 8):
        spec = [_run(device_lm, server.address, [it], draft_tokens=n, draft_min_p=0.0, weight=weight)[0] for it in items]
        for a, b in zip(per_token, spec, strict=True):
            assert b.token_ids == a.token_ids, (n, weight)
            assert b.cloud_calls == a.cloud_calls  # every position was fused with the cloud
            assert not b.fell_back
        if n > 1:  # fewer round trips than tokens (drafts were accepted somewhere)
            assert sum(b.cloud_round_trips for b in spec) < sum(a.cloud_round_trips for a in per_token)
    # lockstep batch: rows accept different numbers of draft tokens; each row still equals its alone run
    batch = _run(device_lm, server.address, items, draft_tokens=4, draft_min_p=0.0, weight=weight, draft_max_batch=3)
    assert [b.token_ids for b in batch] == [a.token_ids for a in per_token]
    for b in batch:  # exact per-row byte accounting: every row has its own channel and capture
        assert b.bytes_received == sum(r.size for r in b.wire_records if r.direction == "received")


def test_a_drafting_round_ends_when_few_rows_still_draft(server, device_lm, monkeypatch):
    """``draft_min_live``: a lockstep draft forward costs the whole batch, so the round stops drafting once
    too few rows still draft. Same tokens as drafting to the end, fewer device forwards."""
    forwards = []
    step = BatchLM.step

    def counted(self, tokens, live=None):
        forwards.append(sum(live) if live is not None else len(tokens))
        return step(self, tokens, live)

    monkeypatch.setattr(BatchLM, "step", counted)
    items = list(zip(INSTRUCTIONS, CONTEXTS, strict=True))
    runs = {}
    for min_live in (0.0, 1.0):
        forwards.clear()
        answers = _run(device_lm, server.address, items, draft_tokens=8, draft_min_p=0.0, draft_min_live=min_live,
                       draft_max_batch=3,
                       weight=0.7)  # rows accept drafts of different lengths
        runs[min_live] = ([a.token_ids for a in answers], len(forwards))
        assert not any(a.fell_back for a in answers)
    assert runs[1.0][0] == runs[0.0][0]
    assert runs[1.0][1] < runs[0.0][1], runs
    with pytest.raises(ValueError, match="draft_min_live"):
        DeviceConfig(draft_min_live=1.5).validate()
    with pytest.raises(ValueError, match="draft_max_batch"):
        DeviceConfig(draft_max_batch=0).validate()


def test_cloud_scores_a_draft_in_one_forward_and_rewinds(server, device_lm):
    client = CloudClient(server.address, insecure=True)
    draft = [100, 2000, 300, 4000]
    try:
        s = client.open_session(INSTRUCTIONS[0], k=128, encoding="fp32")
        s.send_step(draft, score=len(draft))  # one block: after each draft token
        block = s.latest_reply().block
        assert len(block.packets) == len(draft) and block.position == 1
        scored = logit_codec.decode_block(block)
        s.send_step([55], rewind=2)  # keep 2 of the draft, then append 55
        after_rewind = logit_codec.decode(s.latest())
        stats = s.close()
        ref = client.open_session(INSTRUCTIONS[0], k=128, encoding="fp32")
        for t in draft[:2]:
            ref.send_step([t])
            one_by_one = logit_codec.decode(ref.latest())
        ref.send_step([55])
        expected = logit_codec.decode(ref.latest())
        ref.close()
        bad = client.open_session(INSTRUCTIONS[0], k=8)
        bad.send_step([1], rewind=5)
        with pytest.raises(CloudRefused, match="rewinds 5 tokens"):
            bad.latest()
    finally:
        client.close()
    assert torch.allclose(scored[1], one_by_one, atol=1e-4)
    assert torch.allclose(after_rewind, expected, atol=1e-4)
    assert stats is not None and stats.generated_tokens == 3


def test_batch_lm_retract_forgets_rejected_tokens(device_lm):
    prompts = [[1, 2, 3, 4], [5, 6]]
    a = BatchLM(device_lm.model)
    a.prefill(prompts)
    a.step([7, 8])
    a.step([9, 10], live=[True, False])  # row 1 sits this step out
    a.retract(0, 1)  # row 0 forgets 9
    got = a.step([11, 11])
    b = BatchLM(device_lm.model)
    b.prefill(prompts)
    b.step([7, 8])
    want = b.step([11, 11])
    assert torch.allclose(got, want, atol=1e-4)


class _Sharpened(torch.nn.Module):
    """The tiny model with its logits scaled up: a random tiny model is near-uniform (every entropy within
    1e-4 of log V, below float noise), a sharpened one has entropies that differ by nats."""

    def __init__(self, inner: torch.nn.Module, scale: float = 6.0) -> None:
        super().__init__()
        self.inner, self.scale, self.config = inner, scale, inner.config

    def forward(self, **kw):  # noqa: ANN003, ANN201
        out = self.inner(**kw)
        out.logits = out.logits * self.scale
        return out


def test_gated_with_guesses_and_silent_catch_up_equals_the_plain_gated_rule(server, device_lm):
    """At a threshold that asks at some positions only, the overlapped gated loop (silent catch-up,
    guessed forwards, retractions) gives exactly the tokens of the plain rule computed in-process:
    fused where the device's entropy is above the threshold, device alone elsewhere."""
    from fedcogen.client.cogen.decoding import RepetitionControl, choose
    from fedcogen.client.cogen.fusion import entropy, fuse_logprobs
    from fedcogen.client.cogen.incremental_lm import IncrementalLM
    from fedcogen.models import LoadedModel, chat_input_ids
    from fedcogen.prompts import CLOUD_SYSTEM, cloud_prompt

    cloud_lm = load_model("tiny-large")
    sharp = LoadedModel(_Sharpened(device_lm.model), device_lm.tokenizer, "tiny-sharp", "test")
    probe = CogenDevice(DeviceConfig(device_model="tiny", max_new_tokens=N_TOKENS), device_lm=sharp)
    prompt = probe.device_ids(INSTRUCTIONS[0], CONTEXTS[0])
    ctl = RepetitionControl()
    small = IncrementalLM(sharp.model)
    lp, ents, gen = small.prefill(prompt), [], []
    for _ in range(N_TOKENS):  # the device-only path's entropies: a threshold between them splits positions
        ents.append(float(entropy(lp)))
        gen.append(choose(lp, gen, ctl))
        lp = small.step([gen[-1]])
    ents.sort()
    threshold = (ents[len(ents) // 2 - 1] + ents[len(ents) // 2]) / 2
    small, large = IncrementalLM(sharp.model), IncrementalLM(cloud_lm.model)
    lp_s = small.prefill(prompt)
    lp_l = large.prefill(chat_input_ids(cloud_lm.tokenizer, cloud_prompt(INSTRUCTIONS[0]), system=CLOUD_SYSTEM))
    cfg = DeviceConfig()
    expected, asked, closest = [], 0, float("inf")
    for _ in range(N_TOKENS):
        e = float(entropy(lp_s))
        closest = min(closest, abs(e - threshold))
        if e > threshold:
            asked += 1
            wire = logit_codec.decode(logit_codec.encode(lp_l, cfg.k, cfg.encoding), cloud_lm.vocab_size)
            tok = choose(fuse_logprobs(lp_s, wire, cfg.weight), expected, ctl)
        else:
            tok = choose(lp_s, expected, ctl)
        expected.append(tok)
        lp_s, lp_l = small.step([tok]), large.step([tok])
    assert 0 < asked < N_TOKENS and closest > 2e-4  # a clear split, far above float noise (~1e-6)
    # span protection off: the plain rule above does not model it (a held token makes the device decode alone)
    dev = CogenDevice(DeviceConfig(device_model="tiny", cloud=server.address, insecure=True, max_new_tokens=N_TOKENS,
                                   gated_threshold=threshold, protect_private_spans=False), device_lm=sharp)
    try:
        got = dev.generate(INSTRUCTIONS[0], CONTEXTS[0], "gated")
    finally:
        dev.close()
    assert got.token_ids == expected
    assert got.cloud_calls == asked and not got.fell_back


def test_generate_cli_defaults_mirror_device_config():
    import argparse

    from fedcogen.cli import generate as gen_cli

    parser = argparse.ArgumentParser()
    gen_cli.register(parser.add_subparsers())
    args = parser.parse_args(["generate", "--data", "x", "--user", "u"])
    cfg = DeviceConfig()
    for flag in ("k", "encoding", "draft_tokens", "draft_min_p", "gated_metric", "gated_threshold"):
        assert getattr(args, flag) == getattr(cfg, flag), flag
