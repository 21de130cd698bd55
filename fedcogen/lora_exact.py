"""Exact federated aggregation of LoRA: train only what averages exactly.

Why: a LoRA adapter changes a weight by ``s * B @ A``. Averaging A and B as independent tensors
(FedAvg on the adapter dict, what ``lora_mode = "lora"`` does) gives ``mean(B) @ mean(A)``, which
is not the mean of the clients' changes ``mean(B_i @ A_i)``: the cross terms of every pair of
clients are added and the clients' own products are shrunk. Two well-known fixes are built here,
selected by the run config's ``lora_mode``:

* ``freeze_a`` (FFA-LoRA, Sun et al. 2024): A keeps its seeded initial value on every device and
  the server, only B is trained and sent. ``mean(B_i) @ A = mean(B_i @ A)`` exactly; half the
  tensors never travel.
* ``core`` (Fed-SB, Singhal et al. 2025, arXiv 2502.15436): A and B are both frozen and a small
  ``r x r`` matrix R between them is trained: the change is ``s * B @ R @ A`` and ``mean(R_i)`` gives
  exactly ``mean(B @ R_i @ A)``. Only ``r * r`` numbers per module travel (256 at r = 16, against
  ``r * (in + out)`` for LoRA). As in LoRA-SB, B and A are the top-r singular vectors of the base
  weight's gradient, here on *public* synthetic examples every party generates itself
  (:mod:`fedcogen.core_init`), so no data and no extra message is needed.
* ``core_rand``: the same core between data-free factors (A the seeded version 0 of
  :func:`fedcogen.lora_adapter.initial_adapter`, B a seeded Gaussian with unit-norm columns on
  average), derived bit-identically from the seed alone.

In every exact mode the adapter dict that clients train, send, and the server aggregates holds only the
trainable tensors (``lora_B`` weights, or ``lora_B.core``), so the codec's tensor schema, the
broadcast digest and the checkpoint follow from the mode without further changes.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedcogen.core_init import gradient_factors

LORA_MODES = ("lora", "freeze_a", "core", "core_rand")
_CORE_SEED_TAG = 23


@functools.cache
def _core_class() -> type:
    import torch
    from torch import nn

    class LoraCore(nn.Module):
        """Replaces PEFT's ``lora_B`` linear: ``h -> B_frozen @ (R @ h)`` with R (r x r) trained.

        ``weight`` returns the effective B (``B_frozen @ R``) so PEFT's merge / delta-weight code,
        which reads ``lora_B.weight``, sees a plain LoRA pair.
        """

        def __init__(self, frozen_b: Any) -> None:
            super().__init__()
            self.register_buffer("frozen_b", frozen_b)
            r = int(frozen_b.shape[1])
            self.core = nn.Parameter(torch.zeros(r, r, dtype=frozen_b.dtype))

        def forward(self, h: Any) -> Any:
            return torch.nn.functional.linear(torch.nn.functional.linear(h, self.core), self.frozen_b)

        @property
        def weight(self) -> Any:
            return self.frozen_b @ self.core

    return LoraCore


def apply_mode(peft_model: Any, mode: str, seed: int, tokenizer: Any = None, adapter_name: str = "default") -> None:
    """Freeze / restructure the LoRA layers of a freshly built PEFT model for ``mode`` (in place);
    ``core`` needs the tokenizer (its factors come from a gradient on public text)."""
    import torch

    if mode not in LORA_MODES:
        raise ValueError(f"lora_mode must be one of {LORA_MODES}, got {mode!r}")
    if mode == "lora":
        return
    layers = _lora_layers(peft_model, adapter_name)
    grads = {}
    if mode == "core":
        if tokenizer is None:
            raise ValueError("lora_mode 'core' needs the tokenizer to derive its factors")
        grads = core_factors(peft_model, tokenizer, seed, adapter_name=adapter_name)
    for i, (name, layer) in enumerate(layers):
        layer.lora_A[adapter_name].weight.requires_grad_(False)
        if mode == "freeze_a":
            continue
        old_b = layer.lora_B[adapter_name]
        out_features, r = old_b.weight.shape
        if mode == "core":
            frozen, a = grads[name]
            with torch.no_grad():
                layer.lora_A[adapter_name].weight.copy_(a)
        else:
            gen = torch.Generator().manual_seed(
                int(np.random.SeedSequence([seed, i, _CORE_SEED_TAG]).generate_state(1)[0]))
            frozen = torch.randn(out_features, r, generator=gen) / float(np.sqrt(out_features))
        layer.lora_B[adapter_name] = _core_class()(frozen.to(old_b.weight.device, old_b.weight.dtype))


def _lora_layers(peft_model: Any, adapter_name: str) -> list[tuple[str, Any]]:
    return sorted(((name, m) for name, m in peft_model.named_modules()
                   if hasattr(m, "lora_A") and adapter_name in getattr(m, "lora_A", {})), key=lambda x: x[0])


def core_factors(peft_model: Any, tokenizer: Any, seed: int, batch: dict[str, Any] | None = None,
                 adapter_name: str = "default") -> dict[str, tuple[Any, Any]]:
    """Per LoRA layer the ``core`` factors (frozen B, A) from the gradient on the public batch, computed in eval
    mode (no dropout: every party must compute the same gradient). ``batch`` replaces the public batch only for
    measurement (``fedcogen bench adapters``): factors from a client's *own* data would have to be sent to every
    party, so no federation uses them."""
    was_training = peft_model.training
    peft_model.eval()
    try:
        layers = _lora_layers(peft_model, adapter_name)
        return gradient_factors(peft_model, layers, tokenizer, seed, layers[0][1].r[adapter_name], batch=batch)
    finally:
        peft_model.train(was_training)


def set_core_factors(peft_model: Any, factors: Mapping[str, tuple[Any, Any]],
                     adapter_name: str = "default") -> dict[str, tuple[Any, Any]]:
    """Put ``factors`` (:func:`core_factors`) into a ``core`` model in place, cores kept; returns copies of the
    factors replaced, so a measurement can put them back without computing them again."""
    import torch

    old = {}
    with torch.no_grad():
        for name, layer in _lora_layers(peft_model, adapter_name):
            frozen, a = factors[name]
            a_w, b_buf = layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].frozen_b
            old[name] = (b_buf.detach().clone(), a_w.detach().clone())
            a_w.copy_(a)
            b_buf.copy_(frozen)
    return old


def trained_shapes(lora_shapes: Mapping[str, tuple[int, ...]], mode: str) -> dict[str, tuple[int, ...]]:
    """The trained tensors of ``mode`` from the plain LoRA shapes (what the server derives from the
    model's skeleton, without weights): all of them, the B's (``freeze_a``), or one r x r core per module."""
    if mode not in LORA_MODES:
        raise ValueError(f"lora_mode must be one of {LORA_MODES}, got {mode!r}")
    if mode == "lora":
        return dict(lora_shapes)
    bs = {k: tuple(v) for k, v in lora_shapes.items() if ".lora_B." in k}
    if mode == "freeze_a":
        return bs
    return {k.split(".lora_B.")[0] + ".lora_B.core": (int(v[1]), int(v[1])) for k, v in sorted(bs.items())}


def fold_cores(peft_model: Any, adapter_name: str = "default") -> None:
    """Turn every core module back into a plain ``lora_B`` linear holding ``B @ R`` (exact), so the
    model saves as a standard PEFT LoRA adapter (``save_pretrained``) loadable anywhere."""
    import torch
    from torch import nn

    core_cls = _core_class()
    for _name, layer in peft_model.named_modules():
        lora_b = getattr(layer, "lora_B", None)
        mod = lora_b[adapter_name] if lora_b is not None and adapter_name in lora_b else None
        if isinstance(mod, core_cls):
            out_features, r = mod.frozen_b.shape
            lin = nn.Linear(r, out_features, bias=False, dtype=mod.frozen_b.dtype)
            with torch.no_grad():
                lin.weight.copy_(mod.weight)
            layer.lora_B[adapter_name] = lin


# --------------------------------------------------------------------------- what each adapter changes


def module_names(adapter_or_params: Mapping[str, Any]) -> list[str]:
    """The LoRA modules (``...q_proj``) present in an adapter dict, sorted."""
    out = set()
    for k in adapter_or_params:
        for tag in (".lora_A.", ".lora_B."):
            if tag in k:
                out.add(k.split(tag)[0])
    return sorted(out)


def frozen_factors(lm: Any) -> dict[str, dict[str, np.ndarray]]:
    """Per module, the float32 A, B (effective, for ``core``: ``B_frozen``) and scaling of ``lm``'s model."""
    core_cls = _core_class()
    out: dict[str, dict[str, Any]] = {}
    for name, layer in lm.model.named_modules():
        if not (hasattr(layer, "lora_A") and "default" in layer.lora_A):
            continue
        short = name[len("base_model.model."):] if name.startswith("base_model.model.") else name
        b = layer.lora_B["default"]
        out[short] = {
            "A": layer.lora_A["default"].weight.detach().cpu().numpy().astype(np.float32),
            "B": (b.frozen_b if isinstance(b, core_cls) else b.weight).detach().cpu().numpy().astype(np.float32),
            "scale": float(layer.scaling["default"]),
        }
    return out


def weight_changes(adapter: Mapping[str, np.ndarray], factors: Mapping[str, Mapping[str, Any]],
                   mode: str) -> dict[str, np.ndarray]:
    """``s * B @ A`` (or ``s * B @ R @ A``) per module for one adapter dict of the given mode; the
    frozen factors a mode does not send come from ``factors`` (:func:`frozen_factors`)."""
    out = {}
    for mod, f in factors.items():
        if mode.startswith("core"):
            r = np.asarray(adapter[f"{mod}.lora_B.core"], np.float64)
            out[mod] = f["scale"] * (f["B"].astype(np.float64) @ r @ f["A"].astype(np.float64))
            continue
        a = adapter.get(f"{mod}.lora_A.weight", f["A"]) if mode == "lora" else f["A"]
        b = adapter[f"{mod}.lora_B.weight"]
        out[mod] = f["scale"] * (np.asarray(b, np.float64) @ np.asarray(a, np.float64))
    return out


def aggregation_error(client_adapters: Sequence[Mapping[str, np.ndarray]], factors: Mapping[str, Mapping[str, Any]],
                      mode: str, weights: Sequence[float] | None = None) -> dict[str, float]:
    """How far the product of the averaged adapter is from the average of the clients' products.

    Returns ``rel_error`` = ||W(mean adapter) - mean W(adapter_i)||_F / ||mean W(adapter_i)||_F over
    all modules together (W = the weight change :func:`weight_changes` computes), and the two norms.
    Zero (up to float rounding) for ``freeze_a`` and ``core``; positive for ``lora`` whenever clients'
    A differ.
    """
    w = np.asarray(weights if weights is not None else [1.0] * len(client_adapters), np.float64)
    w = w / w.sum()
    names = list(client_adapters[0])
    mean_adapter = {k: sum(wi * np.asarray(a[k], np.float64) for wi, a in zip(w, client_adapters, strict=True))
                    for k in names}
    per_client = [weight_changes(a, factors, mode) for a in client_adapters]
    of_mean = weight_changes(mean_adapter, factors, mode)
    err_sq = ref_sq = 0.0
    for mod in of_mean:
        mean_of = sum(wi * pc[mod] for wi, pc in zip(w, per_client, strict=True))
        err_sq += float(np.sum((of_mean[mod] - mean_of) ** 2))
        ref_sq += float(np.sum(mean_of ** 2))
    return {"rel_error": float(np.sqrt(err_sq / ref_sq)) if ref_sq > 0 else 0.0,
            "error_norm": float(np.sqrt(err_sq)), "mean_change_norm": float(np.sqrt(ref_sq))}
