"""A causal LM decoding many sequences at once, one token per sequence per step, with one KV cache.

Why: on a 2-core CPU a decoding step of a 135M model costs ~35 ms for one sequence and ~55 ms for
eight (measured, ``fedcogen bench cogen``): the work per step is dominated by fixed overhead, so
answering B tasks in lockstep is several times faster than answering them one after another. The
CoGenesis device (``client.cogen_device``) decodes every variant through this class; a batch of one
is the plain single-answer path.

Prompts of different lengths are left-padded; padding is masked and positions count real tokens
only, so each row's log-probs equal those of decoding it alone (up to float rounding).

Placement: the cache, mask and positions live on the model's device (the device setting chose it when
the model was loaded); the log-probs come back to the CPU, where fusion and the logit codec work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fedcogen.accelerator import model_device


class BatchLM:
    """``prefill`` a list of prompts, then ``step`` one token per row; returns log-probs ``[B, V]``."""

    def __init__(self, model: Any, pad_id: int = 0) -> None:
        self.model = model
        self.pad_id = pad_id
        self.device = model_device(model)
        self.cache: Any = None
        self.mask: torch.Tensor | None = None  # [B, past] 1 = real token
        self.positions: torch.Tensor | None = None  # [B] next position of each row

    @torch.inference_mode()
    def prefill(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        from transformers import DynamicCache

        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            mask[i, width - len(p):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        self.cache = DynamicCache()
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=self.cache,
                         use_cache=True)
        self.cache = out.past_key_values
        self.mask = mask
        self.positions = mask.sum(-1)
        return torch.log_softmax(out.logits[:, -1].float(), dim=-1).cpu()

    @torch.inference_mode()
    def step(self, tokens: Sequence[int], live: Sequence[bool] | None = None) -> torch.Tensor:
        """Append one token to every row (finished rows may pass any token; their output is ignored).

        ``live``: rows marked False take no part (their column is masked, their position stays), so
        rows can advance by different numbers of tokens (speculative drafts of different lengths).
        """
        if self.mask is None or self.positions is None:
            raise RuntimeError("prefill first")
        x = torch.tensor([[int(t)] for t in tokens], dtype=torch.long)
        col = torch.ones((len(tokens), 1), dtype=torch.long)
        if live is not None:
            col[:, 0] = torch.tensor([bool(v) for v in live], dtype=torch.long)
        x, col = x.to(self.device), col.to(self.device)
        self.mask = torch.cat([self.mask, col], dim=-1)
        out = self.model(input_ids=x, attention_mask=self.mask, position_ids=self.positions.unsqueeze(-1),
                         past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        self.positions = self.positions + col[:, 0]
        return torch.log_softmax(out.logits[:, -1].float(), dim=-1).cpu()

    @torch.inference_mode()
    def extend(self, tokens: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """Append several tokens per row in ONE forward; returns each row's log-probs after every appended
        token (``[len(tokens[i]), V]``; empty rows get an empty tensor and stay where they are).

        Why: a verifier scores a whole proposal in one pass (the draft-and-edit variant scores the cloud's
        draft). Rows are right-padded to the longest; the padding columns are masked now and for every later
        step, and positions count real tokens only, so a row continues exactly as if its tokens had been
        stepped one by one (up to float rounding). Rejected tokens are forgotten with :meth:`retract`.
        """
        if self.mask is None or self.positions is None:
            raise RuntimeError("prefill first")
        if len(tokens) != self.mask.shape[0]:
            raise ValueError(f"extend got {len(tokens)} rows, the batch has {self.mask.shape[0]}")
        width = max((len(t) for t in tokens), default=0)
        if width == 0:
            return [torch.empty(0) for _ in tokens]
        ids = torch.full((len(tokens), width), self.pad_id, dtype=torch.long)
        cols = torch.zeros((len(tokens), width), dtype=torch.long)
        for i, t in enumerate(tokens):
            if t:
                ids[i, :len(t)] = torch.tensor([int(x) for x in t], dtype=torch.long)
                cols[i, :len(t)] = 1
        ids, cols = ids.to(self.device), cols.to(self.device)
        pos = self.positions.unsqueeze(-1) + torch.arange(width, device=self.device).unsqueeze(0)
        self.mask = torch.cat([self.mask, cols], dim=-1)
        out = self.model(input_ids=ids, attention_mask=self.mask, position_ids=pos, past_key_values=self.cache,
                         use_cache=True)
        self.cache = out.past_key_values
        self.positions = self.positions + cols.sum(-1)
        lp = torch.log_softmax(out.logits.float(), dim=-1).cpu()
        return [lp[i, :len(t)] for i, t in enumerate(tokens)]

    @torch.inference_mode()
    def retract(self, row: int, n: int) -> None:
        """Forget the last ``n`` tokens of ``row`` (rejected draft tokens): their columns are masked out
        and the row's next position moves back, so the row continues as if they never ran."""
        if n <= 0:
            return
        if self.mask is None or self.positions is None:
            raise RuntimeError("prefill first")
        cols = self.mask[row].nonzero().flatten()[-n:]
        if cols.numel() != n:
            raise ValueError(f"row {row} has fewer than {n} tokens to retract")
        self.mask[row, cols] = 0
        self.positions[row] -= n
