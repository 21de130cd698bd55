"""A causal LM with its own KV cache, stepped one token at a time (device decoding, references).

Inputs go to the model's device; log-probs come back to the CPU (where fusion and the codec work).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fedcogen.accelerator import model_device


class IncrementalLM:
    """A causal LM with its own KV cache: ``prefill`` a prompt, then ``step`` one token at a time."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.cache: Any = None
        self.length = 0

    @torch.inference_mode()
    def prefill(self, ids: Sequence[int]) -> torch.Tensor:
        from transformers import DynamicCache

        self.cache = DynamicCache()
        self.length = 0
        return self.step(ids)

    @torch.inference_mode()
    def step(self, ids: Sequence[int]) -> torch.Tensor:
        dev = model_device(self.model)
        x = torch.tensor([list(ids)], dtype=torch.long, device=dev)
        pos = torch.arange(self.length, self.length + len(ids), device=dev).unsqueeze(0)
        out = self.model(input_ids=x, past_key_values=self.cache, position_ids=pos, use_cache=True)
        self.cache = out.past_key_values
        self.length += len(ids)
        return torch.log_softmax(out.logits[0, -1].float(), dim=-1).cpu()

    @torch.inference_mode()
    def teacher_forced(self, prompt: Sequence[int], target: Sequence[int]) -> torch.Tensor:
        """Log-probs predicting each target token (row i predicts target[i]) in one forward."""
        ids = torch.tensor([list(prompt) + list(target)], dtype=torch.long, device=model_device(self.model))
        logits = self.model(input_ids=ids).logits[0].float().cpu()
        start = len(prompt) - 1
        return torch.log_softmax(logits[start : start + len(target)], dim=-1)
