"""Is the cloud the stronger writer? Loss of each model on the reference answers, same prompt.

CoGenesis rests on a premise: the cloud model writes better than the device model, but may not see
the private context. This measures it instead of assuming it: teacher-forced loss of the cloud model
and of the *base* device model on the reference answers, both conditioned on the bare instruction
(what the cloud may see), with the cloud's system prompt. Lower loss = stronger writer.

It also measures the gap CoGenesis reports: the same cloud given the private context as well (the
privacy-violating upper bound, formatted exactly as ``EvalOnlyGenerate`` formats it) must write far
better than the cloud alone, or there is nothing for collaboration to recover.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fedcogen.client.fl.lora_training import IGNORE_INDEX, Encoded, causal_loss, collate
from fedcogen.models import chat_input_ids, pad_id, shared_model
from fedcogen.prompts import CLOUD_SYSTEM, cloud_prompt, device_prompt


def reference_loss(model_name: str, tasks: Sequence[Any], max_seq_len: int = 320, *, adapter: str | None = None,
                   with_context: bool = False) -> float:
    """Token-weighted mean loss on each task's reference given its instruction (and, ``with_context``,
    its private context) under the cloud's system prompt; ``adapter``: a LoRA merged into the model."""
    import torch

    lm = shared_model(model_name, adapter=adapter)
    tok = lm.tokenizer
    pad = pad_id(tok)
    total, count = 0.0, 0
    with torch.inference_mode():
        for t in tasks:
            text = device_prompt(t.instruction, t.private_context) if with_context else cloud_prompt(t.instruction)
            prompt = chat_input_ids(tok, text, system=CLOUD_SYSTEM)
            target = list(tok(t.reference, add_special_tokens=False)["input_ids"])[: max(1, max_seq_len - len(prompt))]
            batch = collate([Encoded(prompt + target, [IGNORE_INDEX] * len(prompt) + target)], pad)
            logits = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss, n_tok = causal_loss(logits.float(), batch["labels"])
            total += float(loss) * n_tok
            count += n_tok
    return total / max(1, count)


def writer_strength(device_model: str, cloud_model: str, tasks: Sequence[Any], max_seq_len: int = 320,
                    cloud_adapter: str | None = None) -> dict[str, Any]:
    """Cloud vs base device from the instruction alone, and the cloud with vs without the context."""
    cloud = reference_loss(cloud_model, tasks, max_seq_len, adapter=cloud_adapter)
    device = reference_loss(device_model, tasks, max_seq_len)
    with_ctx = reference_loss(cloud_model, tasks, max_seq_len, adapter=cloud_adapter, with_context=True)
    return {"cloud_model": cloud_model, "cloud_adapter": cloud_adapter, "device_model": device_model,
            "cloud_loss": cloud, "device_loss": device, "cloud_context_loss": with_ctx,
            "cloud_stronger": cloud < device, "context_gap": cloud - with_ctx, "tasks": len(tasks),
            "what": "teacher-forced loss on the reference answers given the instruction only (lower = stronger); "
                    "cloud_context_loss: the cloud given the private context too (upper bound)"}
