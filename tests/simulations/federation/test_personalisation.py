"""Federated training teaches the device to take the private facts from the context.

The measure is teacher-forced fact recall: the share of the reference's private-fact tokens that the
model predicts exactly (argmax) given the task's own private context. The same measure with another
user's context is the control: a model that ignored the context would gain the same on both, so the
test fails unless the gain comes from reading the context.
"""

from __future__ import annotations

import pytest
import torch

from fedcogen.dataset import load_federation, user_ids
from fedcogen.models import chat_input_ids
from fedcogen.prompts import DEVICE_SYSTEM, device_prompt
from fedcogen.simulations.federation.federation import SimulationConfig, load_run_adapter, run_federation

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

MODEL = "smollm2-24l"


def fact_token_recall(lm, tasks, contexts) -> float:
    """Share of private-fact tokens in the references predicted exactly given ``contexts``."""
    tok = lm.tokenizer
    hit = total = 0
    with torch.inference_mode():
        for task, context in zip(tasks, contexts, strict=True):
            prompt = chat_input_ids(tok, device_prompt(task.instruction, context), system=DEVICE_SYSTEM)
            target = tok(task.reference, add_special_tokens=False, return_offsets_mapping=True)
            ids, spans = target["input_ids"], target["offset_mapping"]
            fact_spans = [(task.reference.find(f), task.reference.find(f) + len(f)) for f in task.private_facts
                          if f in task.reference]
            logits = lm.model(input_ids=torch.tensor([prompt + ids])).logits[0, len(prompt) - 1:-1]
            pred = logits.argmax(-1).tolist()
            for i, (a, b) in enumerate(spans):
                if any(a >= s and b <= e for s, e in fact_spans):
                    total += 1
                    hit += int(pred[i] == ids[i])
    return hit / max(1, total)


def test_federated_lora_learns_to_copy_private_facts_from_the_context(tmp_path):
    cfg = SimulationConfig.from_dict(dict(
        model=MODEL, num_clients=3, clients_per_round=2, rounds=3, local_steps=5, batch_size=4, lr=3e-3,
        lora_r=8, lora_alpha=16, lora_dropout=0.0, lora_targets="q_proj,k_proj,v_proj,o_proj",
        max_seq_len=320, density=0.2, eval_every=3, eval_on="round", seed=0, engine="loopback",
        out_dir=str(tmp_path / "run"), data_dir=str(tmp_path / "data"),
    ))
    run_federation(cfg)
    fed = load_federation(cfg.run.data_dir)
    tasks = [t for u in user_ids(fed) for t in fed.tasks_of(u, "test")[:3]]
    swapped = [tasks[(i + 3) % len(tasks)].private_context for i in range(len(tasks))]  # another user's
    own = [t.private_context for t in tasks]

    lm, _ = load_run_adapter(cfg.run.out_dir)
    after_own, after_swapped = fact_token_recall(lm, tasks, own), fact_token_recall(lm, tasks, swapped)
    with lm.model.disable_adapter():
        before_own = fact_token_recall(lm, tasks, own)
    # the adapter made the device read the facts from the context ...
    assert after_own > before_own + 0.15, (before_own, after_own)
    # ... and not from memory: with another user's context the facts are mostly not produced
    assert after_own > after_swapped + 0.25, (after_own, after_swapped)
