"""The LoRA adapter both sides share: its shape, the PEFT-wrapped model and adapter maths.

Why core: every federated client trains this adapter and the server holds, compresses and
digests the same one, so the spec, the seeded initial adapter (version 0), the naming and the
arithmetic live below both of them and cannot drift apart.

Design points:

* The base model is loaded once per process (:func:`fedcogen.models.shared_model`). PEFT injects
  its LoRA layers into a *structural* copy whose weight tensors are the shared model's own (the
  copy shares every parameter and buffer), so other users of the shared model in the same process
  (e.g. CoGenesis generation) keep seeing the untouched base network while the process holds the
  frozen base weights once. The PEFT-wrapped model is cached per process too (one per (model, seed,
  LoRA shape)); every virtual client of a simulation swaps its adapter in and out of it.
* Placement: ``device`` (:mod:`fedcogen.accelerator`) puts the shared base model on a GPU in bf16/fp16;
  the LoRA tensors stay fp32 there (master weights: PEFT computes the adapter branch in fp32 and the
  optimiser updates fp32 values), so every device trains, sends and digests the same precision.
* Adapters travel as ``dict[str, np.ndarray]`` (float32) with short, stable names
  (``model.layers.0.self_attn.q_proj.lora_A.weight``): the codec and the aggregator never see torch.
* The initial adapter (A uniform in +-1/sqrt(fan_in) as PEFT's default, B zero) is a pure numpy
  function of the seed and the shapes (:func:`initial_adapter`), so server and clients agree on
  "version 0" without sending it, and the server gets shapes and version 0 from the model's
  architecture alone (:func:`adapter_layout`: meta-device skeleton, no weights loaded).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedcogen.accelerator import master_dtype, placement
from fedcogen.lora_exact import LORA_MODES, apply_mode, trained_shapes
from fedcogen.models import shared_model, skeleton_model
from fedcogen.run_config import FLSettings

_PEFT_PREFIX = "base_model.model."
_ADAPTER_NAME = "default"


@dataclass(frozen=True)
class LoraSpec:
    """Shape of the LoRA adapter (defaults: r=8, alpha=16, dropout 0.05 on q_proj and v_proj) and which
    of its parts are trained (``mode``: see :mod:`fedcogen.lora_exact`)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    mode: str = "lora"

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"LoRA rank r must be >= 1 (got {self.r})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1) (got {self.dropout})")
        if not self.targets:
            raise ValueError("LoRA needs at least one target module (e.g. q_proj,v_proj)")
        if self.mode not in LORA_MODES:
            raise ValueError(f"LoRA mode must be one of {LORA_MODES} (got {self.mode!r})")

    @staticmethod
    def parse_targets(text: str | Sequence[str]) -> tuple[str, ...]:
        """``"q_proj,v_proj"`` or a list -> a normalised tuple."""
        items = text.split(",") if isinstance(text, str) else list(text)
        return tuple(t.strip() for t in items if t.strip())


@dataclass
class LoraModel:
    """A PEFT-wrapped private copy of the base model plus its tokenizer and adapter parameters."""

    model: Any
    tokenizer: Any
    params: dict[str, Any]  # short name -> torch Parameter (the trainable LoRA tensors)
    initial: dict[str, np.ndarray]  # the seeded initial adapter (version 0)
    model_name: str
    seed: int
    spec: LoraSpec

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(p.shape) for k, p in self.params.items()}

    def num_adapter_params(self) -> int:
        return int(sum(p.numel() for p in self.params.values()))


def _short_name(peft_name: str) -> str:
    name = peft_name[len(_PEFT_PREFIX):] if peft_name.startswith(_PEFT_PREFIX) else peft_name
    return name.replace(f".{_ADAPTER_NAME}.", ".")


def lora_model(model_name: str, seed: int = 0, spec: LoraSpec = LoraSpec(), device: str = "cpu") -> LoraModel:
    """Per-process cached PEFT model for ``(model_name, seed, spec, device)``.

    The LoRA tensors start at :func:`initial_adapter` (numpy, seeded), so every process (server, each
    Ray worker, a resumed run) holds bit-identical initial adapters. ``device`` is resolved first
    (``auto`` and the device it means share one cached model).
    """
    return _lora_model(model_name, seed, spec, placement(device).key)


@functools.lru_cache(maxsize=4)
def _lora_model(model_name: str, seed: int, spec: LoraSpec, device: str) -> LoraModel:
    base = shared_model(model_name, seed, device)
    # copy the module tree, not the weights: every parameter and buffer stays the shared model's own
    shared = {id(t): t for t in (*base.model.parameters(), *base.model.buffers())}
    model_copy = copy.deepcopy(base.model, shared)
    pm = _with_lora(model_copy, model_name, spec)
    _master_weights(pm)
    # every LoRA tensor at version 0 first (numpy, seeded: the frozen A of freeze_a / core_rand is this
    # too), then the mode freezes A or puts an r x r core between frozen factors
    lora = {_short_name(n): p for n, p in pm.named_parameters() if p.requires_grad}
    _load(lora, initial_adapter({k: tuple(p.shape) for k, p in lora.items()}, seed))
    apply_mode(pm, spec.mode, seed, base.tokenizer)
    params = {_short_name(n): p for n, p in pm.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError(f"LoRA targets {spec.targets} matched no module of model {model_name}")
    params = dict(sorted(params.items()))
    initial = {k: p.detach().cpu().numpy().astype(np.float32, copy=True) for k, p in params.items()}
    pm.eval()
    lm = LoraModel(pm, base.tokenizer, params, initial, model_name, seed, spec)
    set_adapter(lm, initial)
    return lm


def _master_weights(pm: Any) -> None:
    """Trainable LoRA tensors in fp32 whatever the base dtype (PEFT already does this by default on
    half-precision bases; this makes it a guarantee the digest and the optimiser rely on)."""
    dtype = master_dtype()
    for p in pm.parameters():
        if p.requires_grad and p.dtype != dtype:
            p.data = p.data.to(dtype)


def _with_lora(model: Any, model_name: str, spec: LoraSpec) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                     target_modules=list(spec.targets), task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):  # PEFT's own init is overwritten by initial_adapter
        try:
            return get_peft_model(model, cfg)
        except ValueError as exc:
            raise ValueError(f"cannot apply LoRA to {model_name} with targets {spec.targets}: {exc}") from exc


@dataclass(frozen=True)
class AdapterLayout:
    """What the server needs of the adapter: its tensor shapes and the seeded version 0."""

    shapes: dict[str, tuple[int, ...]]
    initial: dict[str, np.ndarray]

    def num_adapter_params(self) -> int:
        return int(sum(math.prod(s) for s in self.shapes.values()))


@functools.lru_cache(maxsize=4)
def adapter_layout(model_name: str, seed: int = 0, spec: LoraSpec = LoraSpec()) -> AdapterLayout:
    """Shapes and initial adapter from the model's architecture alone (meta device, no weights)."""
    pm = _with_lora(skeleton_model(model_name), model_name, spec)
    shapes = {_short_name(n): tuple(p.shape) for n, p in pm.named_parameters() if p.requires_grad}
    if not shapes:
        raise ValueError(f"LoRA targets {spec.targets} matched no module of model {model_name}")
    shapes = dict(sorted(shapes.items()))
    if spec.mode == "lora":
        return AdapterLayout(shapes, initial_adapter(shapes, seed))
    trained = trained_shapes(shapes, spec.mode)  # what the mode trains starts at zero (B, or the core)
    return AdapterLayout(trained, {k: np.zeros(v, np.float32) for k, v in trained.items()})


def initial_adapter(shapes: Mapping[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """Version 0: ``lora_A`` uniform in +-1/sqrt(fan_in) (PEFT's kaiming default), ``lora_B`` zero.

    Seeded per tensor name, so it depends on nothing but (seed, names, shapes).
    """
    out: dict[str, np.ndarray] = {}
    for name in sorted(shapes):
        shape = tuple(int(x) for x in shapes[name])
        if ".lora_A." in name:
            bound = 1.0 / math.sqrt(max(1, shape[-1]))
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(name.encode()), 0x10A]))
            out[name] = rng.uniform(-bound, bound, size=shape).astype(np.float32)
        elif ".lora_B." in name:
            out[name] = np.zeros(shape, np.float32)
        else:
            raise ValueError(f"unexpected trainable LoRA tensor {name!r} (only lora_A / lora_B are supported)")
    return out


def _load(params: Mapping[str, Any], values: Mapping[str, np.ndarray]) -> None:
    import torch

    with torch.no_grad():
        for k, p in params.items():
            p.copy_(torch.from_numpy(np.ascontiguousarray(values[k], dtype=np.float32)))


def get_adapter(lm: LoraModel) -> dict[str, np.ndarray]:
    """Copy of the current adapter as float32 numpy arrays (sorted by name)."""
    return {k: p.detach().cpu().numpy().astype(np.float32, copy=True) for k, p in lm.params.items()}


def set_adapter(lm: LoraModel, adapter: Mapping[str, np.ndarray]) -> None:
    """Load ``adapter`` into the model; names and shapes must match exactly."""
    import torch

    missing = set(lm.params) - set(adapter)
    extra = set(adapter) - set(lm.params)
    if missing or extra:
        raise ValueError(f"adapter names do not match the model: missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(extra)[:3]}")
    with torch.no_grad():
        for k, p in lm.params.items():
            arr = np.asarray(adapter[k], dtype=np.float32)
            if tuple(arr.shape) != tuple(p.shape):
                raise ValueError(f"adapter tensor {k} has shape {arr.shape}, model expects {tuple(p.shape)}")
            p.copy_(torch.from_numpy(np.ascontiguousarray(arr)))


def adapter_digest(adapter: Mapping[str, np.ndarray]) -> str:
    """sha256 over names, shapes and float32 bytes: clients prove they rebuilt the broadcast exactly."""
    h = hashlib.sha256()
    for k in sorted(adapter):
        arr = np.ascontiguousarray(np.asarray(adapter[k], dtype=np.float32))
        h.update(k.encode())
        h.update(repr(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def adapter_sub(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: (np.asarray(a[k], np.float32) - np.asarray(b[k], np.float32)).astype(np.float32) for k in a}


def adapter_add(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: (np.asarray(a[k], np.float32) + np.asarray(b[k], np.float32)).astype(np.float32) for k in a}


def adapter_norm(a: Mapping[str, np.ndarray]) -> float:
    return float(math.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in a.values())))


def lora_spec(settings: FLSettings) -> LoraSpec:
    """The adapter shape a run's settings ask for (server and every client build the same one)."""
    return LoraSpec(
        r=settings.lora_r,
        alpha=settings.lora_alpha,
        dropout=settings.lora_dropout,
        targets=LoraSpec.parse_targets(settings.lora_targets),
        mode=settings.lora_mode,
    )
