"""Is the cloud the stronger writer? Loss of each model on the reference answers, same prompt.

CoGenesis rests on a premise: the cloud model writes better than the device model, but may not see
the private context. This measures the first half instead of assuming it: teacher-forced loss of the
cloud model and of the *base* device model on the reference answers, both conditioned on the bare
instruction (what the cloud may see), with the cloud's system prompt. Lower loss = stronger writer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fedcogen.client.fl.lora_training import IGNORE_INDEX, Encoded, causal_loss, collate
from fedcogen.models import chat_input_ids, pad_id, shared_model
from fedcogen.prompts import CLOUD_SYSTEM, cloud_prompt


def reference_loss(model_name: str, tasks: Sequence[Any], max_seq_len: int = 320) -> float:
    """Token-weighted mean loss on each task's reference given only its instruction."""
    import torch

    lm = shared_model(model_name)
    tok = lm.tokenizer
    pad = pad_id(tok)
    total, count = 0.0, 0
    with torch.inference_mode():
        for t in tasks:
            prompt = chat_input_ids(tok, cloud_prompt(t.instruction), system=CLOUD_SYSTEM)
            target = list(tok(t.reference, add_special_tokens=False)["input_ids"])[: max(1, max_seq_len - len(prompt))]
            batch = collate([Encoded(prompt + target, [IGNORE_INDEX] * len(prompt) + target)], pad)
            logits = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss, n_tok = causal_loss(logits.float(), batch["labels"])
            total += float(loss) * n_tok
            count += n_tok
    return total / max(1, count)


def writer_strength(device_model: str, cloud_model: str, tasks: Sequence[Any], max_seq_len: int = 320) -> dict[str, Any]:
    cloud, device = reference_loss(cloud_model, tasks, max_seq_len), reference_loss(device_model, tasks, max_seq_len)
    return {"cloud_model": cloud_model, "device_model": device_model, "cloud_loss": cloud, "device_loss": device,
            "cloud_stronger": cloud < device, "tasks": len(tasks),
            "what": "teacher-forced loss on the reference answers given the instruction only (lower = stronger)"}
