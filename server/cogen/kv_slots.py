"""Per-session KV caches that grow in place, and ONE packed forward over many sessions' tokens.

Why: the first cloud batcher re-padded, concatenated and cut every session's cache at every batched
step (``DynamicCache`` appends with ``torch.cat``, i.e. a full copy of the cache per token). Here:

* **Each session owns preallocated buffers** ``[layers, kv_heads, capacity, head_dim]`` (keys and
  values) that grow by doubling: appending a token writes it in place; a rewind (rejected speculative
  draft) only moves the length back. No step copies a cache.
* **One packed forward serves everyone.** The tokens of all work items of a scheduler tick (decode
  steps, drafts, a chunk of a long prefill) are concatenated into one sequence ``[1, total]`` with
  per-token position ids. The big matmuls (projections, MLP, LM head on the positions that need
  logits) run once over all of them; only attention is per session: each session's queries attend to
  its own buffer (``torch.nn.functional.scaled_dot_product_attention``, causal within its new tokens).
  Sessions of different lengths need no padding at all.

This is the scheme of serving engines (vLLM's continuous batching with chunked prefill) in ~150 lines
of PyTorch, because the installed ``transformers`` caches (``DynamicCache``, ``StaticCache``) share one
write position per batch and cannot hold sessions of different lengths without padding and copies.
The attention hook is registered with transformers' ``AttentionInterface``; for ordinary tensors it
delegates to the stock SDPA path, so the same model still runs ``DynamicCache`` code (Sketch, tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fedcogen.accelerator import model_device

ATTN_NAME = "fedcogen_packed"


class SessionKV:
    """One session's keys and values, ``[layers, kv_heads, capacity, head_dim]`` each, grown by doubling."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype = torch.float32,
                 capacity: int = 128, device: torch.device | str = "cpu") -> None:
        self.k = torch.empty(layers, kv_heads, capacity, head_dim, dtype=dtype, device=device)
        self.v = torch.empty(layers, kv_heads, capacity, head_dim, dtype=dtype, device=device)
        self.length = 0

    @classmethod
    def for_model(cls, model: Any, capacity: int = 128) -> SessionKV:
        """Buffers on the model's device in its dtype (GPU memory for a GPU-served model)."""
        cfg = model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return cls(cfg.num_hidden_layers, cfg.num_key_value_heads, head_dim, model.dtype, capacity,
                   model_device(model))

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def reserve(self, n: int) -> None:
        """Make room for ``n`` more tokens (one copy when the buffer doubles, amortised O(1) per token)."""
        need = self.length + n
        if need <= self.capacity:
            return
        cap = max(need, 2 * self.capacity)
        k = self.k.new_empty(*self.k.shape[:2], cap, self.k.shape[3])
        v = self.v.new_empty(*self.v.shape[:2], cap, self.v.shape[3])
        k[:, :, : self.length] = self.k[:, :, : self.length]
        v[:, :, : self.length] = self.v[:, :, : self.length]
        self.k, self.v = k, v

    def rewind(self, n: int) -> None:
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot rewind {n} tokens of a {self.length}-token cache")
        self.length -= n

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2


@dataclass
class Segment:
    """One session's tokens inside a packed forward."""

    kv: SessionKV
    start: int  # offset in the packed sequence
    n: int  # tokens of this session in the forward
    past: int  # the session's cached tokens before this forward


class PackedKV:
    """What the cache hands the attention hook: the segments and the layer (keys and values live in them)."""

    def __init__(self, segments: Sequence[Segment], layer: int) -> None:
        self.segments, self.layer = segments, layer


class PackedCache:
    """The ``past_key_values`` of one packed forward: writes each segment's new keys/values in place."""

    is_compileable = False

    def __init__(self, segments: Sequence[Segment]) -> None:
        self.segments = list(segments)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               cache_kwargs: dict[str, Any] | None = None) -> tuple[PackedKV, PackedKV]:
        for s in self.segments:
            s.kv.k[layer_idx, :, s.past:s.past + s.n] = key_states[0, :, s.start:s.start + s.n]
            s.kv.v[layer_idx, :, s.past:s.past + s.n] = value_states[0, :, s.start:s.start + s.n]
        kv = PackedKV(self.segments, layer_idx)
        return kv, kv

    def get_seq_length(self, layer_idx: int = 0) -> int:  # only asked when position_ids are missing
        raise RuntimeError("a packed forward needs explicit position_ids")


def packed_attention(module: Any, query: torch.Tensor, key: Any, value: Any, attention_mask: Any,
                     scaling: float | None = None, dropout: float = 0.0, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Per-session attention over each session's own buffer; stock SDPA for ordinary tensors."""
    if not isinstance(key, PackedKV):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    outs = []
    for s in key.segments:
        q = query[:, :, s.start:s.start + s.n]
        total = s.past + s.n
        k = s.kv.k[key.layer, :, :total].unsqueeze(0)
        v = s.kv.v[key.layer, :, :total].unsqueeze(0)
        mask = None
        if s.n > 1:  # causal inside the new tokens; everything cached before is visible
            at = torch.arange(total, device=query.device)
            mask = at.unsqueeze(0) <= (s.past + at[: s.n]).unsqueeze(1)
        outs.append(torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling,
                                                                     enable_gqa=q.shape[1] != k.shape[1]))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def install(model: Any) -> None:
    """Register the packed attention hook and switch ``model`` to it (ordinary calls behave as SDPA)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_NAME, packed_attention)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
    model.set_attn_implementation(ATTN_NAME)


@torch.inference_mode()
def packed_forward(model: Any, items: Sequence[tuple[SessionKV, Sequence[int], int]]) -> list[torch.Tensor]:
    """One forward over every item's tokens: ``(kv, token_ids, n_logits)`` -> per item the float logits
    ``[n_logits, V]`` after its last ``n_logits`` tokens, on the CPU (where the scheduler and the logit
    codec work, whatever device the model is on). Every item's ``kv`` grows by its tokens."""
    segments, ids, pos, keep = [], [], [], []
    start = 0
    for kv, toks, n_logits in items:
        n = len(toks)
        kv.reserve(n)
        segments.append(Segment(kv, start, n, kv.length))
        ids += list(toks)
        pos += range(kv.length, kv.length + n)
        keep += range(start + n - n_logits, start + n)
        start += n
    dev = model_device(model)
    out = model(input_ids=torch.tensor([ids], dtype=torch.long, device=dev),
                position_ids=torch.tensor([pos], dtype=torch.long, device=dev),
                past_key_values=PackedCache(segments), attention_mask=torch.ones(1, 1, 1, 1, dtype=torch.bool, device=dev),
                use_cache=True, logits_to_keep=torch.tensor(keep, dtype=torch.long, device=dev))
    logits = out.logits[0].float().cpu()
    results, at = [], 0
    for (kv, _toks, n_logits), s in zip(items, segments, strict=True):
        kv.length = s.past + s.n
        results.append(logits[at:at + n_logits])
        at += n_logits
    return results
