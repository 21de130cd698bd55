"""Frozen factors of the ``core`` LoRA mode from the gradient of public synthetic data (LoRA-SB style).

Why: a trained ``r x r`` core between *random* frozen factors can only change the weights inside two
random r-dimensional subspaces, and on the embedded model it learned far slower per step than LoRA
(measured: validation loss 2.75 -> 2.15 after 9 steps, LoRA 2.75 -> 1.74). LoRA-SB / Fed-SB
(arXiv 2502.15436) instead take the factors from a truncated SVD of the full-weight gradient, so the
core moves the weights in the directions a full fine-tuning step would. Fed-SB computes that
gradient on training data; here every party (server and each device) computes it on the same
*public* synthetic examples (fake users of the project's generator with a seed no federation uses),
so no private data is touched and nothing extra is sent: each side derives the factors itself.

Agreement across parties: the batch, model and seed are identical, and each singular pair's sign is
fixed (the largest-magnitude entry of ``u`` positive), so processes agree up to float rounding of the
gradient; the server aggregates only the cores, which are exact averages whatever tiny rounding
differences the factors carry.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedcogen import dataset as sd
from fedcogen.accelerator import model_device, to_device
from fedcogen.models import chat_input_ids, pad_id
from fedcogen.prompts import DEVICE_SYSTEM

PUBLIC_SEED_OFFSET = 0x5EED_0C0E  # no run seed is this large: the public users are nobody's data
PUBLIC_EXAMPLES = 4
PUBLIC_MAX_LEN = 256


def public_batch(tokenizer: Any, seed: int) -> dict[str, Any]:
    """A padded batch of public synthetic (prompt, target) examples with prompt tokens masked (-100)."""
    import torch

    fed = sd.generate_federation(sd.FederationConfig(n_users=2, seed=PUBLIC_SEED_OFFSET + int(seed)))
    pairs = [ex for uid in sd.user_ids(fed) for ex in sd.client_examples(fed, uid, "train")[: PUBLIC_EXAMPLES // 2]]
    rows = []
    for prompt, target in pairs:
        p = list(chat_input_ids(tokenizer, prompt, system=DEVICE_SYSTEM))
        t = list(tokenizer(target, add_special_tokens=False)["input_ids"]) + [int(tokenizer.eos_token_id or 0)]
        t = t[: PUBLIC_MAX_LEN - 1]
        p = p[-(PUBLIC_MAX_LEN - len(t)):]
        rows.append((p + t, [-100] * len(p) + t))
    width = max(len(ids) for ids, _ in rows)
    pad = pad_id(tokenizer)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def gradient_factors(peft_model: Any, layers: list[tuple[str, Any]], tokenizer: Any, seed: int,
                     r: int, batch: dict[str, Any] | None = None) -> dict[str, tuple[Any, Any]]:
    """Per LoRA layer: (U_r: out x r, V_r^T: r x in) of the base weight's gradient on the public batch
    (or on ``batch``: only ``fedcogen bench adapters`` passes one, to measure an oracle no federation may use)."""
    import torch

    weights = [layer.base_layer.weight for _, layer in layers]
    before = [w.requires_grad for w in weights]
    batch = to_device(public_batch(tokenizer, seed) if batch is None else batch, model_device(peft_model))
    try:
        for w in weights:
            w.requires_grad_(True)
            w.grad = None
        with torch.enable_grad():
            peft_model(**batch).loss.backward()
        grads = {name: layer.base_layer.weight.grad.detach().double() for name, layer in layers}
    finally:
        for w, req in zip(weights, before, strict=True):
            w.grad = None
            w.requires_grad_(req)
    out = {}
    for name, g in grads.items():
        u, _s, vh = torch.linalg.svd(g, full_matrices=False)
        u, vh = u[:, :r], vh[:r]
        flip = torch.sign(u.gather(0, u.abs().argmax(dim=0, keepdim=True)))  # canonical signs
        flip[flip == 0] = 1
        out[name] = ((u * flip).float().contiguous(), (vh * flip.T).float().contiguous())
    return out


def check_orthonormal(factors: dict[str, tuple[Any, Any]], atol: float = 1e-4) -> None:
    """Both factors have orthonormal columns / rows (what the core's scale assumes); raises otherwise."""
    for name, (u, vh) in factors.items():
        r = u.shape[1]
        for m in (u.T @ u, vh @ vh.T):
            if not np.allclose(m.numpy(), np.eye(r), atol=atol):
                raise ValueError(f"gradient factors of {name} are not orthonormal")
