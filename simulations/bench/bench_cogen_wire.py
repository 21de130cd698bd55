"""Bytes per token vs top-1 agreement of the fused choice with full-vocabulary fusion (per device model).

Teacher-forced on reference answers, in-process: the cloud's distribution at every position goes
through the same codec the wire uses (``logit_codec.encode`` -> ``decode``), is fused with the device's
distribution (fixed weight), and the fused argmax is compared with fusing the full fp32 distribution.
Bytes are the serialized size of the reply a per-token step gets (``DecodeReply`` with one packet; a
speculative block shares the packet header fields and is a little smaller per position).
"""

from __future__ import annotations

from typing import Any

import torch

from fedcogen.client.cogen.fusion import fuse_logprobs
from fedcogen.client.cogen.incremental_lm import IncrementalLM
from fedcogen.models import chat_input_ids, check_tokenizers_match, shared_model
from fedcogen.prompts import CLOUD_SYSTEM, DEVICE_SYSTEM, cloud_prompt, device_prompt
from fedcogen.protocols import cogen_pb2 as pb
from fedcogen.protocols.codecs import logit_codec

#: (encoding, k) points of the curve
MODES: tuple[tuple[str, int], ...] = (
    ("packed8", 16), ("packed8", 24), ("packed8", 32), ("packed8", 48), ("packed8", 64),
    ("fp16", 16), ("fp16", 32), ("fp16", 64), ("fp16", 128), ("int8", 64),
)


def teacher_forced(cloud_model: str, device_model: str, tasks: list[dict[str, str]], max_tokens: int,
                   torch_device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Device and cloud log-probs at every reference position: ``[N, V]`` each (both models on ``torch_device``)."""
    cloud, device = shared_model(cloud_model, 0, torch_device), shared_model(device_model, 0, torch_device)
    check_tokenizers_match(device.tokenizer, cloud.tokenizer)
    small, large = IncrementalLM(device.model), IncrementalLM(cloud.model)
    s_rows, l_rows = [], []
    for t in tasks:
        ref = device.tokenizer(t["reference"], add_special_tokens=False)["input_ids"][:max_tokens]
        if not ref:
            continue
        s_rows.append(small.teacher_forced(chat_input_ids(device.tokenizer, device_prompt(
            t["instruction"], t["private_context"]), DEVICE_SYSTEM), ref))
        l_rows.append(large.teacher_forced(chat_input_ids(cloud.tokenizer, cloud_prompt(t["instruction"]),
                                                          CLOUD_SYSTEM), ref))
    return torch.cat(s_rows), torch.cat(l_rows)


def wire_curve(lp_small: torch.Tensor, lp_large: torch.Tensor, weight: float,
               modes: tuple[tuple[str, int], ...] = MODES) -> dict[str, Any]:
    """Agreement and reply bytes per position for every (encoding, k) of ``modes``."""
    base = fuse_logprobs(lp_small, lp_large, weight).argmax(-1)
    points = []
    for enc, k in modes:
        hits = size = 0
        for i in range(lp_large.shape[0]):
            packet = logit_codec.encode(lp_large[i], k, enc)
            size += pb.DecodeReply(logits=packet).ByteSize()
            rebuilt = logit_codec.decode(packet, lp_large.shape[-1])
            hits += int(int(fuse_logprobs(lp_small[i], rebuilt, weight).argmax()) == int(base[i]))
        n = max(1, lp_large.shape[0])
        points.append({"encoding": enc, "k": k, "bytes_per_token": size / n, "agreement": hits / n})
    full = pb.DecodeReply(logits=logit_codec.encode(lp_large[0], 0, "full")).ByteSize()
    # How often the full-fusion choice lies outside the cloud's own top-k (a packet chosen by the cloud
    # alone cannot carry that token's value; the bound for weak devices)
    outside = {k: float((torch.topk(lp_large, k, dim=-1).indices != base.unsqueeze(-1)).all(-1).float().mean())
               for k in (16, 32, 64)}
    return {"positions": int(lp_large.shape[0]), "points": points, "full_fp32_bytes_per_token": full,
            "fused_choice_outside_cloud_topk": outside}


def best_point(curve: dict[str, Any], max_bytes: float = 128.0, min_agreement: float = 0.995) -> dict[str, Any] | None:
    """The cheapest point meeting both limits (None if none does)."""
    ok = [p for p in curve["points"] if p["bytes_per_token"] <= max_bytes and p["agreement"] >= min_agreement]
    return min(ok, key=lambda p: p["bytes_per_token"]) if ok else None
