"""Value quantisation of the sparse update format: fp32, fp16 (saturated), symmetric int8, int4, or sign1.

Why hand-written: the values are the top-k entries of an error-fed-back update, a few thousand
floats per tensor, and the quantiser must be bit-reproducible on both sides, bounded by a stated
error, and decodable from hostile bytes without allocating more than the honest payload. Library
quantisers (torch.ao, bitsandbytes) target model weights in memory, not a validated wire format.

``int4`` exploits what top-k leaves: every sent value has a magnitude of at least the selection
threshold, so a symmetric grid around zero would waste half its levels on magnitudes that never
occur. Each value is a sign bit and a 3-bit magnitude level ``q`` in 0..7 on the tensor's own range
``|v| = lo + q * step`` (``lo`` = smallest sent magnitude, ``step = (max - lo) / 7``), two per byte
(first value in the low nibble). The error per value is at most ``step / 2``; error feedback carries
it into the next round.

``sign1`` sends one bit per value (set = negative, first value in the lowest bit) and one f32 scale per
tensor, the mean magnitude of the sent values, so every value decodes to ``+-scale`` (EF-signSGD's
scaled sign, Karimireddy et al. 2019: the scale keeps the tensor's L1 mass). Its error per value is not
bounded by a small step (``| |v| - scale |``, up to the largest magnitude); the client's error feedback
(``corrected - decoded``) carries the whole of it into the next round, which is what makes 1-bit values
converge at all.
"""

from __future__ import annotations

import math

import numpy as np

from fedcogen.protocols.codecs.sparse_format import UpdateRejected

FP16_MAX = 65504.0
INT4_LEVELS = 7  # magnitude levels 0..7 (3 bits) plus a sign bit

# how many float32 parameters each quantisation stores in a record header
QUANT_PARAMS: dict[str, int] = {"fp32": 0, "fp16": 0, "int8": 1, "int4": 2, "sign1": 1}


def value_bytes(quant: str, k: int) -> int:
    """Payload bytes of k values: what the decoder expects, so no length travels on the wire."""
    if quant == "fp32":
        return 4 * k
    if quant == "fp16":
        return 2 * k
    if quant == "int8":
        return k
    if quant == "sign1":
        return (k + 7) // 8
    return (k + 1) // 2


def quantise(values: np.ndarray, quant: str) -> tuple[tuple[float, ...], bytes]:
    """(params, payload). fp16 saturates at +-65504 (error feedback carries the clipped part)."""
    v = values.astype(np.float32, copy=False)
    if quant == "fp32":
        return (), v.astype("<f4").tobytes()
    if quant == "fp16":
        return (), np.clip(v, -FP16_MAX, FP16_MAX).astype("<f2").tobytes()
    if quant == "int8":
        maxabs = float(np.abs(v).max()) if v.size else 0.0
        scale = float(np.float32(maxabs / 127.0))
        if scale == 0.0 or not math.isfinite(scale):
            return (0.0,), np.zeros(v.size, dtype=np.int8).tobytes()
        q = np.clip(np.rint(v.astype(np.float64) / scale), -127, 127).astype(np.int8)
        return (scale,), q.tobytes()
    if quant == "sign1":
        return _quantise_sign1(v)
    return _quantise_int4(v)


def _quantise_sign1(v: np.ndarray) -> tuple[tuple[float, ...], bytes]:
    scale = float(np.float32(np.abs(v.astype(np.float64)).mean())) if v.size else 0.0
    if not math.isfinite(scale):
        raise ValueError("sign1 quantisation of non-finite values")
    return (scale,), np.packbits(np.signbit(v), bitorder="little").tobytes()


def _quantise_int4(v: np.ndarray) -> tuple[tuple[float, ...], bytes]:
    mag = np.abs(v.astype(np.float64))
    if v.size == 0:
        return (0.0, 0.0), b""
    lo = float(np.float32(mag.min()))
    step = float(np.float32((float(mag.max()) - lo) / INT4_LEVELS))
    if not (math.isfinite(lo) and math.isfinite(step)):
        raise ValueError("int4 quantisation of non-finite values")
    if step > 0:
        q = np.clip(np.rint((mag - lo) / step), 0, INT4_LEVELS).astype(np.uint8)
    else:
        q = np.zeros(v.size, dtype=np.uint8)
    nib = q | (np.signbit(v).astype(np.uint8) << 3)
    if nib.size % 2:
        nib = np.append(nib, np.uint8(0))
    return (lo, step), (nib[0::2] | (nib[1::2] << 4)).astype(np.uint8).tobytes()


def dequantise(payload: bytes | memoryview, quant: str, params: tuple[float, ...], k: int, name: str) -> np.ndarray:
    """Values from a payload whose length the caller already checked against :func:`value_bytes`."""
    if quant == "fp32":
        vals = np.frombuffer(payload, dtype="<f4").astype(np.float32)
    elif quant == "fp16":
        vals = np.frombuffer(payload, dtype="<f2").astype(np.float32)
    elif quant == "int8":
        q = np.frombuffer(payload, dtype=np.int8)
        if q.size and int(q.min()) < -127:
            raise UpdateRejected("malformed", f"tensor {name!r}: int8 value -128 is outside symmetric range", name)
        with np.errstate(over="ignore"):  # a hostile scale may overflow: rejected as nonfinite below
            vals = q.astype(np.float32) * np.float32(params[0])
    elif quant == "sign1":
        bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8), bitorder="little")
        if bits[k:].any():
            raise UpdateRejected("malformed", f"tensor {name!r}: sign1 padding bits are not zero", name)
        with np.errstate(over="ignore"):
            vals = np.where(bits[:k].astype(bool), -np.float32(params[0]), np.float32(params[0])).astype(np.float32)
    else:
        raw = np.frombuffer(payload, dtype=np.uint8)
        nib = np.empty(2 * raw.size, dtype=np.uint8)
        nib[0::2], nib[1::2] = raw & 0x0F, raw >> 4
        if nib.size > k and nib[k]:
            raise UpdateRejected("malformed", f"tensor {name!r}: int4 padding nibble is not zero", name)
        nib = nib[:k]
        with np.errstate(over="ignore"):
            mag = np.float32(params[0]) + (nib & 0x07).astype(np.float32) * np.float32(params[1])
        vals = np.where(nib & 0x08, -mag, mag).astype(np.float32)
    if not np.isfinite(vals).all():
        raise UpdateRejected("nonfinite", f"tensor {name!r}: values contain NaN or Inf", name)
    return vals


def check_params(quant: str, params: tuple[float, ...], name: str) -> None:
    """Every quantisation parameter must be finite and non-negative (scale, lo, step)."""
    for p in params:
        if not math.isfinite(p):
            raise UpdateRejected("nonfinite", f"tensor {name!r}: {quant} parameter is NaN or Inf", name)
        if p < 0:
            raise UpdateRejected("malformed", f"tensor {name!r}: {quant} parameter {p} is negative", name)


def error_bound(quant: str, params: tuple[float, ...]) -> float:
    """Largest |v - dequantised(v)| for values the encoder produced with these params (fp: relative, 0 here)."""
    if quant == "int8":
        return params[0] / 2
    if quant == "int4":
        return params[1] / 2
    if quant == "sign1":
        return math.inf  # | |v| - scale | is unbounded by the params; error feedback carries it
    return 0.0
