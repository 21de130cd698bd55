"""Long private contexts (~2,000 tokens: a profile plus many past texts) and batched decoding."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from fedcogen.client.cogen.batch_lm import BatchLM
from fedcogen.client.cogen.cogen_device import CogenDevice, DeviceConfig
from fedcogen.client.cogen.decoding import RepetitionControl, apply_repetition_control, banned_tokens
from fedcogen.client.cogen.incremental_lm import IncrementalLM
from fedcogen.models import load_model
from fedcogen.prompts import fit_context
from fedcogen.server.cogen.cloud_service import CloudConfig, start_cloud_server
from fedcogen.simulations.evaluation.cogen_generator import CogenGenerator
from fedcogen.simulations.evaluation.evaluate import EvalConfig, evaluate

PROFILE = "me: Ada Quill\nhome city: Lowmoor\nemployer: Brightwell Mills"
PAST = [f"Past text {i}: " + " ".join(f"word{i}x{j}" for j in range(60)) for i in range(14)]
LONG_CONTEXT = "\n\n".join([PROFILE, *PAST])


@dataclass
class Task:
    user_id: str
    instruction: str
    private_context: str
    reference: str
    private_facts: list
    task_id: str = ""
    task_type: str = "email"


def test_fit_context_keeps_the_profile_and_the_newest_texts():
    count = len  # characters stand in for tokens
    fitted = fit_context(LONG_CONTEXT, count, 1200)
    assert len(fitted) <= 1200
    assert fitted.startswith(PROFILE)  # the profile is kept
    assert PAST[-1] in fitted and PAST[0] not in fitted  # newest kept, oldest dropped first
    assert fit_context("short", count, 100) == "short"
    head_only = fit_context(LONG_CONTEXT, count, 20)
    assert len(head_only) <= 20 and PROFILE.startswith(head_only)


def test_repetition_control_bans_repeated_ngrams_and_penalises_seen_tokens():
    assert banned_tokens([1, 2, 3, 1, 2], 3) == [3]  # "1 2 3" exists, so 3 may not follow "1 2" again
    assert banned_tokens([1, 2], 3) == []
    lp = torch.log_softmax(torch.tensor([2.0, 1.9, 0.0, -1.0]), dim=-1)
    out = apply_repetition_control(lp, [0], RepetitionControl(penalty=1.5, no_repeat_ngram=0))
    assert int(out.argmax()) == 1 and torch.isclose(out.exp().sum(), torch.tensor(1.0))
    with pytest.raises(ValueError):
        RepetitionControl(penalty=0.5)


@pytest.fixture(scope="module")
def cloud():
    srv = start_cloud_server(CloudConfig(model="tiny-large", insecure=True, allow_eval_only_context=True,
                                         eval_max_new_tokens=6), lm=load_model("tiny-large"))
    yield srv
    srv.stop(grace=1)


def test_batched_decoding_matches_one_at_a_time():
    lm = load_model("tiny")
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]
    batch = BatchLM(lm.model, pad_id=0)
    lp = batch.prefill(prompts)
    steps = [[21, 22, 23], [31, 32, 33], [41, 42, 43]]
    outs = [lp]
    for j in range(3):
        outs.append(batch.step([steps[i][j] for i in range(3)]))
    for i, p in enumerate(prompts):
        single = IncrementalLM(lm.model)
        ref = [single.prefill(p)] + [single.step([t]) for t in steps[i]]
        for a, b in zip(ref, outs, strict=True):
            assert torch.allclose(a, b[i], atol=1e-4)


def test_eval_answers_2000_token_contexts_with_every_variant(cloud):
    device_lm = load_model("tiny")
    tok_count = len(device_lm.tokenizer(LONG_CONTEXT)["input_ids"])
    assert tok_count > 1500, tok_count
    tasks = [Task(f"u{i}", "Write a short note to my neighbour.", LONG_CONTEXT, "Dear neighbour, hello.",
                  ["Lowmoor"], task_id=f"t{i}") for i in range(3)]
    variants = ["device", "sketch", "logit", "gated", "cloud_with_context"]
    for budget in (3072, 600):  # the default fits the whole context; a small budget truncates it
        cfg = DeviceConfig(device_model="tiny", cloud=cloud.address, insecure=True, max_new_tokens=6,
                           max_prompt_tokens=budget)
        dev = CogenDevice(cfg, device_lm=device_lm)
        assert len(dev.device_ids(tasks[0].instruction, LONG_CONTEXT)) <= budget
        gen = CogenGenerator(dev)
        try:
            result = evaluate(tasks, gen, variants, config=EvalConfig(progress=False, batch_size=2, resamples=50))
        finally:
            gen.close()
        errors = [r for r in result.rows if "error" in r]
        assert errors == []
        assert all(r["tokens"] > 0 for r in result.rows if r["variant"] != "cloud_with_context")
