"""draft_edit over real gRPC on loopback (tiny device, tiny-large cloud): the acceptance rule, its two ends
(tau = 0 is the cloud's draft, tau > 1 the device's own greedy answer), a lockstep batch equal to rows decoded
alone, fewer device forwards than tokens when drafts are kept, and a cloud that receives only the instruction."""

from __future__ import annotations

import argparse
import math

import pytest
import torch

from fedcogen.cli.common import add_decoding_args, decoding_settings
from fedcogen.cli.eval import personalised_needed
from fedcogen.client.cogen.batch_lm import BatchLM
from fedcogen.client.cogen.cogen_device import CogenDevice, DeviceConfig
from fedcogen.client.cogen.decoders.draft_edit import accepts, realign
from fedcogen.prompts import cloud_prompt

CANARY = "CANARY-d4e1"
INSTRUCTIONS = ["Write a short note to my landlord about the broken heater.", "Write a birthday message to my sister."]
CONTEXTS = [f"Landlord: Mr. Osei. Flat 4B, door code {CANARY}.", "Sister: Mira, turning 30 on Saturday."]
ITEMS = list(zip(INSTRUCTIONS, CONTEXTS, strict=True))
N_TOKENS = 24


def _run(device_lm, address, variant, items=ITEMS, **kw):
    cfg = DeviceConfig(device_model="tiny", cloud=address, insecure=True, max_new_tokens=N_TOKENS, **kw)
    dev = CogenDevice(cfg, device_lm=device_lm)
    try:
        return dev.generate_batch(items, variant)
    finally:
        dev.close()


def test_the_acceptance_rule_compares_with_the_devices_top_token():
    lp = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert accepts(lp, 0, 1.0)  # the top token itself, at tau = 1
    assert accepts(lp, 1, 0.59) and not accepts(lp, 1, 0.61)  # 0.3 / 0.5 = 0.6
    assert accepts(lp, 3, 0.09) and not accepts(lp, 3, 0.11)  # 0.05 / 0.5 = 0.1
    assert all(accepts(lp, t, 0.0) for t in range(4))  # tau = 0 keeps everything
    assert accepts(torch.tensor([0.0, -math.inf]), 1, 0.0)  # even a token the device rules out
    assert not any(accepts(lp, t, 1.01) for t in range(4))  # tau > 1 keeps nothing


def test_realign_resumes_after_the_devices_token_in_a_growing_window():
    draft = [10, 11, 12, 13, 14, 15, 16]
    assert realign(draft, 1, 11, written=1, window=2) == 2  # the device wrote the draft's own token
    assert realign(draft, 1, 12, written=1, window=2) == 3  # dropped one draft token
    assert realign(draft, 1, 14, written=1, window=2) is None  # too far ahead for the window ...
    assert realign(draft, 1, 14, written=3, window=2) == 5  # ... until the device wrote more on its own
    assert realign(draft, 1, 99, written=50, window=2) is None  # never seen: keep writing alone
    assert realign(draft, 7, 10, written=1, window=8) is None  # draft used up


def test_extend_equals_stepping_token_by_token(device_lm):
    prompts = [[1, 2, 3, 4], [5, 6]]
    a = BatchLM(device_lm.model)
    a.prefill(prompts)
    outs = a.extend([[7, 8, 9], [10]])  # ragged: row 1 appends one token
    assert [tuple(o.shape) for o in outs] == [(3, device_lm.vocab_size), (1, device_lm.vocab_size)]
    a.retract(0, 1)  # row 0 forgets 9
    got = a.step([11, 12])
    b = BatchLM(device_lm.model)
    b.prefill(prompts)
    s1 = b.step([7, 10])
    s2 = b.step([8, 12], live=[True, False])
    want = b.step([11, 12], live=[True, True])
    assert torch.allclose(outs[0][0], s1[0], atol=1e-4) and torch.allclose(outs[1][0], s1[1], atol=1e-4)
    assert torch.allclose(outs[0][1], s2[0], atol=1e-4)
    assert torch.allclose(got, want, atol=1e-4)
    assert [o.numel() for o in a.extend([[], []])] == [0, 0]
    with pytest.raises(ValueError, match="the batch has 2"):
        a.extend([[1]])


def test_tau_zero_keeps_the_whole_draft_in_fewer_forwards(server, device_lm):
    cloud = _run(device_lm, server.address, "cloud")
    kept = _run(device_lm, server.address, "draft_edit", draft_edit_tau=0.0)
    assert [a.token_ids for a in kept] == [c.token_ids for c in cloud]  # the draft is the cloud's answer
    for a in kept:
        assert not a.fell_back and a.tokens > 0
        assert a.draft_accepted == a.tokens and a.device_written == 0
        assert a.draft_tokens == a.tokens  # the whole draft, up to its stop or the cap
        assert a.device_passes < a.tokens  # a block of draft tokens per forward


def test_tau_above_one_is_the_devices_own_greedy_answer(server, device_lm):
    alone = _run(device_lm, server.address, "device")
    edited = _run(device_lm, server.address, "draft_edit", draft_edit_tau=1.5)
    assert [a.token_ids for a in edited] == [d.token_ids for d in alone]
    for a, d in zip(edited, alone, strict=True):
        assert a.draft_accepted == 0 and a.draft_tokens > 0
        assert a.device_written >= a.tokens  # every token (and the stop, if any) is the device's
        assert a.device_passes == d.device_passes == a.tokens  # one forward per token, as the device alone


def test_a_lockstep_batch_equals_each_row_alone(server, device_lm):
    for tau in (0.3, 0.9):
        batch = _run(device_lm, server.address, "draft_edit", draft_edit_tau=tau, draft_edit_block=4)
        alone = [_run(device_lm, server.address, "draft_edit", items=[it], draft_edit_tau=tau, draft_edit_block=4)[0]
                 for it in ITEMS]
        assert [a.token_ids for a in batch] == [a.token_ids for a in alone]
        for a in batch:
            assert a.draft_accepted + a.device_written >= a.tokens  # every token is kept or written (+ a stop)


def test_the_cloud_receives_the_instruction_and_its_own_draft_only(server, device_lm):
    alone = _run(device_lm, server.address, "device")
    cloud = _run(device_lm, server.address, "cloud")
    edited = _run(device_lm, server.address, "draft_edit", draft_edit_tau=1.5)  # every token the device's
    for a, c, d, (instruction, context) in zip(edited, cloud, alone, ITEMS, strict=True):
        assert a.token_ids != c.token_ids  # the answer is the device's, not the draft
        sent = [r for r in a.wire_records if r.direction == "sent"]
        opens = [r.message.open for r in sent if r.message.WhichOneof("kind") == "open"]
        steps = [list(r.message.step.token_ids) for r in sent if r.message.WhichOneof("kind") == "step"]
        assert len(opens) == 1 and opens[0].instruction == cloud_prompt(instruction) and not opens[0].instruction_ids
        assert [t for s in steps for t in s] == c.token_ids[:-1]  # the cloud's own choices, fed back
        assert all(CANARY.encode() not in r.raw and context.encode() not in r.raw for r in sent)
        assert a.token_ids == d.token_ids


def test_config_refuses_bad_settings():
    with pytest.raises(ValueError, match="draft_edit_tau"):
        DeviceConfig(draft_edit_tau=-0.1).validate()
    with pytest.raises(ValueError, match="draft_edit_tau"):
        DeviceConfig(draft_edit_tau=math.nan).validate()
    with pytest.raises(ValueError, match="draft_edit_block"):
        DeviceConfig(draft_edit_block=-1).validate()


def test_the_cli_flag_sets_tau_and_leaves_the_tuned_default_otherwise():
    p = argparse.ArgumentParser()
    add_decoding_args(p)
    assert decoding_settings(p.parse_args(["--draft-edit-tau", "0.25"]))["draft_edit_tau"] == 0.25
    assert "draft_edit_tau" not in decoding_settings(p.parse_args([]))


def test_eval_runs_collaboration_on_the_personalised_device_whenever_an_adapter_is_given(tmp_path):
    assert personalised_needed(["draft_edit"], tmp_path)  # was False: draft_edit ran on the base device
    assert personalised_needed(["device_personalised"], None)
    assert not personalised_needed(["draft_edit"], None) and not personalised_needed(["device", "cloud"], tmp_path)
