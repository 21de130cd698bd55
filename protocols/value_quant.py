"""Value quantisation of the sparse update format: fp32, fp16 (saturated) or symmetric int8."""

from __future__ import annotations

import math

import numpy as np

from fedcogen.protocols.sparse_format import UpdateRejected

FP16_MAX = 65504.0


def quantise(values: np.ndarray, quant: str) -> tuple[float, bytes]:
    """(scale, payload). fp16 saturates at +-65504 (error feedback carries the clipped part)."""
    v = values.astype(np.float32, copy=False)
    if quant == "fp32":
        return 0.0, v.astype("<f4").tobytes()
    if quant == "fp16":
        return 0.0, np.clip(v, -FP16_MAX, FP16_MAX).astype("<f2").tobytes()
    maxabs = float(np.abs(v).max()) if v.size else 0.0
    scale = float(np.float32(maxabs / 127.0))
    if scale == 0.0 or not math.isfinite(scale):
        return 0.0, np.zeros(v.size, dtype=np.int8).tobytes()
    q = np.clip(np.rint(v.astype(np.float64) / scale), -127, 127).astype(np.int8)
    return scale, q.tobytes()


def dequantise(payload: bytes, quant: str, scale: float, k: int, name: str) -> np.ndarray:
    if quant == "fp32":
        vals = np.frombuffer(payload, dtype="<f4").astype(np.float32)
    elif quant == "fp16":
        vals = np.frombuffer(payload, dtype="<f2").astype(np.float32)
    else:
        q = np.frombuffer(payload, dtype=np.int8)
        if q.size and int(q.min()) < -127:
            raise UpdateRejected("malformed", f"tensor {name!r}: int8 value -128 is outside symmetric range", name)
        with np.errstate(over="ignore"):  # a hostile scale may overflow: rejected as nonfinite below
            vals = q.astype(np.float32) * np.float32(scale)
    if not np.isfinite(vals).all():
        raise UpdateRejected("nonfinite", f"tensor {name!r}: values contain NaN or Inf", name)
    return vals
