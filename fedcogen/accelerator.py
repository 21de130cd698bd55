"""The one device setting: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps`` -> a torch device and dtype.

Why one module: local training, evaluation, generation, the cloud's scheduler and the benchmarks all
place a model somewhere. If each parsed its own string, ``cuda`` would mean four slightly different
things (and a typo would silently fall back to the CPU in one of them). Here the setting is checked
once (:func:`check_setting`, no torch needed: the run configuration validates with it), resolved once
(:func:`resolve_device`, with an error that says what is missing when the asked device is not there)
and mapped to the dtype each device computes in (:func:`compute_dtype`).

Dtypes: fp32 on the CPU (bf16 matmuls on a CPU are slower than fp32 and change results); bf16 on a GPU
that supports it, else fp16 (older CUDA cards, Apple MPS). Trained LoRA adapters always keep fp32
master weights (:data:`MASTER_DTYPE`): PEFT casts its adapter layers to fp32 on half-precision bases
and the federated protocol sends and digests fp32 arrays, so every device trains and aggregates the
same numbers' precision.

GPU-only code paths are the small named functions :func:`_cuda_device`, :func:`_mps_device` and
:func:`_gpu_dtype`; on a CPU-only machine only the error branches of the first two run (tested);
``scripts/gpu_check.sh`` exercises the rest when a GPU is lent (docs/gpu.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

SETTINGS_HELP = "auto (cuda if present, else mps, else cpu), cpu, cuda, cuda:N or mps"
_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


class DeviceError(ValueError):
    """A device setting is malformed or names a device this machine does not have."""


def check_setting(setting: str) -> str:
    """The normalised setting (lower case, stripped); a malformed one raises :class:`DeviceError`.

    Pure string check, no torch import: configuration loaders call it to fail before any work starts.
    """
    text = str(setting).strip().lower()
    if not _PATTERN.match(text):
        raise DeviceError(f"device {setting!r} is not one of: {SETTINGS_HELP}")
    return text


def resolve_device(setting: str = "auto") -> Any:
    """``setting`` -> ``torch.device``; asking for a device this machine lacks is an error, never a fallback.

    ``auto`` picks CUDA device 0 when CUDA is available, else Apple's MPS, else the CPU. Inside a Flower
    simulation, Ray hides the GPUs from clients that reserved none (``num-gpus = 0``), so ``auto`` is the
    CPU there unless the simulation gives each client a GPU share (docs/gpu.md).
    """
    import torch

    text = check_setting(setting)
    if text == "cpu":
        return torch.device("cpu")
    if text == "auto":
        if torch.cuda.is_available():
            return _cuda_device("cuda")
        if mps_available():
            return _mps_device()
        return torch.device("cpu")
    if text == "mps":
        return _mps_device()
    return _cuda_device(text)


def _cuda_device(text: str) -> Any:
    """GPU path: ``cuda`` / ``cuda:N`` after checking CUDA and the index exist."""
    import torch

    if not torch.cuda.is_available():
        build = f"this torch {torch.__version__} was built without CUDA" if torch.version.cuda is None \
            else f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device"
        raise DeviceError(f"device {text!r} asked for, but {build}; use --device cpu or auto")
    index = int(text.split(":", 1)[1]) if ":" in text else 0
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"device {text!r} asked for, but this machine has {count} CUDA device(s) "
                          f"(cuda:0..cuda:{count - 1}); check CUDA_VISIBLE_DEVICES")
    return torch.device("cuda", index)


def mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _mps_device() -> Any:
    """Apple GPU path: ``mps`` after checking the backend exists."""
    import torch

    if not mps_available():
        raise DeviceError("device 'mps' asked for, but this torch has no available MPS backend (Apple GPU); "
                          "use --device cpu or auto")
    return torch.device("mps")


def compute_dtype(device: Any) -> Any:
    """The dtype a frozen base model runs in on ``device``: fp32 on the CPU, bf16/fp16 on a GPU."""
    import torch

    if torch.device(device).type == "cpu":
        return torch.float32
    return _gpu_dtype(torch.device(device))


def _gpu_dtype(device: Any) -> Any:
    """GPU path: bf16 where the device supports it (Ampere and newer), else fp16 (older CUDA cards, MPS)."""
    import torch

    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def master_dtype() -> Any:
    """Trainable adapter weights (and every adapter array on the wire) stay fp32 on every device."""
    import torch

    return torch.float32


@dataclass(frozen=True)
class Placement:
    """Where a model lives and the dtype its frozen weights compute in."""

    device: Any
    dtype: Any

    @property
    def key(self) -> str:
        """Stable text for caches and logs (``cpu``, ``cuda:0``, ``mps``)."""
        d = self.device
        return d.type if d.index is None else f"{d.type}:{d.index}"


def placement(setting: str = "auto") -> Placement:
    """Resolve a setting to its device and compute dtype (what model loaders call)."""
    device = resolve_device(setting)
    return Placement(device, compute_dtype(device))


def canonical(setting: str = "auto") -> str:
    """The resolved device as text (``auto`` -> ``cpu`` here): a cache key that means one device."""
    return placement(setting).key


def model_device(model: Any) -> Any:
    """The device a model runs on: its ``device`` (Hugging Face models), else its first parameter's;
    the CPU for an object with neither (a wrapper that only forwards calls, a parameterless module)."""
    import torch

    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    parameters = getattr(model, "parameters", None)
    if callable(parameters):
        for p in parameters():
            return p.device
    return torch.device("cpu")


def to_device(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    """Move every tensor of a batch to ``device`` (non-blocking where the source is pinned)."""
    return {k: v.to(device, non_blocking=True) if hasattr(v, "to") else v for k, v in batch.items()}


def gpu_share(setting: str, concurrent: int) -> float:
    """Ray GPU share per simulated client: 0 unless ``setting`` resolves to a CUDA device here, then
    ``1 / concurrent`` so that the clients of one round fit on one GPU together.

    Why a share and not a whole GPU: a LoRA client of a small model uses a fraction of a GPU's memory
    and compute; with ``num-gpus = 1`` Ray would run one client per GPU and leave it mostly idle.
    """
    if resolve_device(setting).type != "cuda":
        return 0.0
    return 1.0 / max(1, int(concurrent))
