"""Local LoRA training on the device: tokenisation of (prompt, target) pairs, the loss, the loop.

Why this module exists: every federated client (and the benchmarks) needs the same tokenisation,
the same loss and the same optimiser loop. The adapter itself (spec, PEFT model, adapter maths)
is shared with the server and lives in :mod:`fedcogen.lora_adapter`.

Loss is causal-LM loss on the *target* tokens only (prompt tokens are masked with -100).

Placement: batches are built on the CPU and moved to wherever the model lives (:mod:`fedcogen.accelerator`;
the device setting chose it when the model was loaded), so the same loops run on a CPU or a GPU.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedcogen.accelerator import model_device, to_device
from fedcogen.lora_adapter import LoraModel
from fedcogen.models import chat_input_ids, pad_id
from fedcogen.prompts import DEVICE_SYSTEM

IGNORE_INDEX = -100


# --------------------------------------------------------------------------- data


@dataclass
class Encoded:
    """One tokenised example: ids and labels (prompt masked)."""

    input_ids: list[int]
    labels: list[int]


def encode_examples(
    tokenizer: Any, examples: Sequence[tuple[str, str]], max_seq_len: int = 256, *, system: str = DEVICE_SYSTEM
) -> list[Encoded]:
    """Chat-format the prompt (with ``system``: the device's system prompt unless said), append target +
    EOS, mask the prompt.

    Too long examples keep their target (truncated from the right only if the target alone is
    longer than ``max_seq_len``) and lose the *start* of the prompt: the end of the prompt holds the
    instruction, which matters most for predicting the target.
    """
    out: list[Encoded] = []
    eos = tokenizer.eos_token_id
    for prompt, target in examples:
        p_ids = list(chat_input_ids(tokenizer, prompt, system=system))
        t_ids = list(tokenizer(target, add_special_tokens=False)["input_ids"])
        if eos is not None:
            t_ids.append(int(eos))
        t_ids = t_ids[: max(1, max_seq_len - 1)]
        room = max_seq_len - len(t_ids)
        p_ids = p_ids[-room:] if room > 0 else p_ids[-1:]
        out.append(Encoded(p_ids + t_ids, [IGNORE_INDEX] * len(p_ids) + t_ids))
    return out


def collate(batch: Sequence[Encoded], pad_id: int) -> dict[str, Any]:
    """Right-pad a batch; padding is masked in attention and loss."""
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def batch_plan(n_examples: int, steps: int, batch_size: int, seed: int) -> list[list[int]]:
    """Which example indices each local step uses: seeded epochs of shuffled indices."""
    if n_examples <= 0:
        raise ValueError("client has no training examples")
    rng = np.random.default_rng(seed)
    order: list[int] = []
    plan: list[list[int]] = []
    for _ in range(steps):
        batch = []
        for _ in range(min(batch_size, n_examples)):
            if not order:
                order = rng.permutation(n_examples).tolist()
            batch.append(order.pop())
        plan.append(batch)
    return plan


def target_loss(model: Any, batch: Mapping[str, Any]) -> tuple[Any, int]:
    """Causal-LM loss on target tokens, projecting only the target positions through the LM head.

    Why: with a 49k vocabulary the LM head and its softmax dominate the cost of a small model, and
    most tokens of a personalisation example are prompt (system prompt + private context), whose
    logits the loss never uses. Running the decoder, gathering the hidden states that predict a
    target token, and projecting only those gives the same loss as ``model(labels=...)`` for a
    fraction of the compute. Models without ``get_decoder`` fall back to full logits.
    """
    import torch.nn.functional as F

    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = causal.get_decoder() if hasattr(causal, "get_decoder") else None
    head = causal.get_output_embeddings() if hasattr(causal, "get_output_embeddings") else None
    if decoder is None or head is None or getattr(causal.config, "final_logit_softcapping", None):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return causal_loss(out.logits, batch["labels"])
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    shift_labels = batch["labels"][:, 1:]
    keep = shift_labels != IGNORE_INDEX
    n_tok = int(keep.sum())
    logits = head(hidden[:, :-1, :][keep])
    loss = F.cross_entropy(logits.float(), shift_labels[keep])
    return loss, n_tok


def causal_loss(logits: Any, labels: Any) -> tuple[Any, int]:
    """Mean token loss over non-masked target tokens (shifted), and the token count."""
    import torch.nn.functional as F

    shift_logits = logits[:, :-1, :]
    shift_labels = labels[:, 1:]
    n_tok = int((shift_labels != IGNORE_INDEX).sum())
    loss = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), ignore_index=IGNORE_INDEX
    )
    return loss, n_tok


@dataclass
class TrainResult:
    """What local training did: mean loss over steps, tokens seen (all, incl. prompt) and time."""

    loss: float
    steps: int
    examples: int
    tokens: int
    target_tokens: int
    seconds: float
    losses: list[float] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def train_local(
    lm: LoraModel,
    data: Sequence[Encoded],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> TrainResult:
    """``steps`` AdamW steps of target-token causal-LM loss on ``data`` (adapter params only).

    A fresh optimiser per round keeps client state small (residual + broadcast copy only) and
    makes a round a pure function of (broadcast adapter, data, seed), which resume relies on.
    """
    import torch

    params = list(lm.params.values())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    plan = batch_plan(len(data), steps, batch_size, seed)
    pad = pad_id(lm.tokenizer)
    device = model_device(lm.model)
    losses: list[float] = []
    tokens = target_tokens = 0
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lm.model.train()
        try:
            for idx in plan:
                batch = to_device(collate([data[i] for i in idx], pad), device)
                loss, n_tok = target_loss(lm.model, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                tokens += int(batch["attention_mask"].sum())
                target_tokens += n_tok
        finally:
            lm.model.eval()
    seconds = time.perf_counter() - started
    mean = float(np.mean(losses)) if losses else float("nan")
    return TrainResult(mean, len(plan), sum(len(b) for b in plan), tokens, target_tokens, seconds, losses)


def plain_peft_train(lm: LoraModel, data: Sequence[Encoded], *, steps: int, batch_size: int, lr: float,
                     seed: int) -> TrainResult:
    """Reference loop for the throughput benchmark: same batches, plain HF-style ``labels=`` loss.

    No fork_rng, no per-step bookkeeping beyond tokens: the cost floor a PEFT user would write.
    """
    import torch

    opt = torch.optim.AdamW(list(lm.params.values()), lr=lr, weight_decay=0.0)
    plan = batch_plan(len(data), steps, batch_size, seed)
    pad = pad_id(lm.tokenizer)
    device = model_device(lm.model)
    batches = [to_device(collate([data[i] for i in idx], pad), device) for idx in plan]
    torch.manual_seed(seed)
    lm.model.train()
    tokens = 0
    losses = []
    started = time.perf_counter()
    for batch in batches:
        out = lm.model(**batch)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
        tokens += int(batch["attention_mask"].sum())
    seconds = time.perf_counter() - started
    lm.model.eval()
    return TrainResult(float(np.mean(losses)), len(plan), sum(len(b) for b in plan), tokens, 0, seconds, losses)


def eval_loss(lm: LoraModel, data: Sequence[Encoded], *, batch_size: int = 8) -> tuple[float, int]:
    """Token-weighted mean target loss over ``data`` and the number of target tokens."""
    import torch

    if not data:
        return float("nan"), 0
    pad = pad_id(lm.tokenizer)
    total = 0.0
    n_total = 0
    device = model_device(lm.model)
    lm.model.eval()
    with torch.no_grad():
        for i in range(0, len(data), batch_size):
            batch = to_device(collate(data[i : i + batch_size], pad), device)
            loss, n_tok = target_loss(lm.model, batch)
            total += float(loss) * n_tok
            n_total += n_tok
    return (total / n_total if n_total else float("nan")), n_total
