"""The sparse update format's vocabulary: size limits, coding and quantisation ids, the codec
settings, the in-memory sparse tensor and the one exception every decoder raises.

Shared by the pieces of the codec (:mod:`fedcogen.protocols.codecs.index_coding`,
:mod:`fedcogen.protocols.codecs.value_quant`, :mod:`fedcogen.protocols.codecs.topk`,
:mod:`fedcogen.protocols.codecs.sparse_codec`) so none of them depends on another for its names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_ELEMENTS = 2**31 - 1  # per tensor; keeps every gap / cumulative sum far from int64 overflow
MAX_NDIM = 8
MAX_NAME_BYTES = 1024

# "shared": no index payload, the support is derived from the blob's seed (shared-support blobs only,
# :mod:`fedcogen.protocols.codecs.shared_support`)
CODINGS: dict[str, int] = {"none": 0, "dense": 1, "bitmap": 2, "delta_varint": 3, "rice": 4, "shared": 5}
CODING_NAMES: dict[int, str] = {v: k for k, v in CODINGS.items()}
QUANTS: dict[str, int] = {"fp32": 0, "fp16": 1, "int8": 2, "int4": 3, "sign1": 4}
QUANT_NAMES: dict[int, str] = {v: k for k, v in QUANTS.items()}
SELECTABLE_CODINGS = ("bitmap", "delta_varint", "rice")

REASONS = frozenset(
    {
        "unknown_tensor",
        "shape",
        "index_range",
        "unsorted",
        "duplicate",
        "nonfinite",
        "oversize",
        "byte_count",
        "malformed",
        "version",
        "checksum",
        "schema",
        "support",
    }
)


class UpdateRejected(ValueError):
    """A sparse update (blob or in-memory) failed validation.

    ``reason`` is a short machine-readable code from :data:`REASONS` (servers count / log these);
    ``str(exc)`` is a sentence naming the tensor and the problem. ``internal`` is True only when an
    unexpected error inside the decoder was converted (a decoder bug, never a well-formed verdict).
    """

    def __init__(self, reason: str, message: str, tensor: str | None = None, internal: bool = False):
        if reason not in REASONS:
            raise AssertionError(f"unknown rejection reason {reason!r}")
        super().__init__(message)
        self.reason = reason
        self.tensor = tensor
        self.internal = internal


@dataclass(frozen=True)
class CodecConfig:
    """How an update is compressed (the decoder needs none of this: each record names its coding and
    quantisation; only the tensor schema must be shared)."""

    density: float = 0.01  # fraction of entries sent; 1.0 = dense
    scope: str = "per_tensor"  # "per_tensor" | "global" top-k selection
    quant: str = "int8"  # "fp32" | "fp16" | "int8" (symmetric, per-tensor scale) | "int4" (sign + 3-bit level)
    # | "sign1" (one bit + one f32 scale per tensor)
    index_coding: str = "auto"  # "auto" | "bitmap" | "delta_varint" | "rice"
    # None: top-k selection, indices on the wire; a u64: the round's public seed of a shared random
    # support (per tensor, ``density`` of its entries; no indices on the wire)
    shared_seed: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.density, int | float) and 0.0 < float(self.density) <= 1.0):
            raise ValueError(f"CodecConfig.density must be in (0, 1], got {self.density!r}")
        if self.scope not in ("per_tensor", "global"):
            raise ValueError(f"CodecConfig.scope must be 'per_tensor' or 'global', got {self.scope!r}")
        if self.quant not in QUANTS:
            raise ValueError(f"CodecConfig.quant must be one of {sorted(QUANTS)}, got {self.quant!r}")
        if self.index_coding not in ("auto", *SELECTABLE_CODINGS):
            raise ValueError(
                f"CodecConfig.index_coding must be 'auto' or one of {list(SELECTABLE_CODINGS)}, "
                f"got {self.index_coding!r}"
            )
        if self.shared_seed is not None:
            if isinstance(self.shared_seed, bool) or not isinstance(self.shared_seed, int) \
                    or not 0 <= self.shared_seed < 2**64:
                raise ValueError(f"CodecConfig.shared_seed must be None or a u64, got {self.shared_seed!r}")
            if self.scope != "per_tensor" or self.index_coding != "auto":
                raise ValueError("CodecConfig.shared_seed draws a support per tensor and sends no indices: "
                                 f"scope must be 'per_tensor' (got {self.scope!r}) and index_coding 'auto' "
                                 f"(got {self.index_coding!r})")


@dataclass
class SparseTensor:
    """k entries of a tensor: sorted unique flat ``indices`` (int64) and float32 ``values``."""

    indices: np.ndarray
    values: np.ndarray
    shape: tuple[int, ...]

    @property
    def n(self) -> int:
        return numel(self.shape)

    @property
    def k(self) -> int:
        return int(self.indices.size)


def numel(shape: tuple[int, ...]) -> int:
    return int(math.prod(int(s) for s in shape))


def to_numpy(x: Any) -> np.ndarray:
    """Accept numpy arrays, torch tensors (any device) or anything ``np.asarray`` takes."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def sendable_array(name: str, tensor: Any) -> np.ndarray:
    """``tensor`` as float32 numpy, refused (``UpdateRejected``) when too large or not finite: every selection
    of what to send (top-k, shared random supports) checks the same two things before it picks entries."""
    a = to_numpy(tensor).astype(np.float32, copy=False)
    if a.size > MAX_ELEMENTS:
        raise UpdateRejected("oversize", f"tensor {name!r} has {a.size} entries (max {MAX_ELEMENTS})", name)
    if not np.isfinite(a).all():
        raise UpdateRejected("nonfinite", f"tensor {name!r} contains NaN or Inf; refusing to send it", name)
    return a


def check_shape(name: str, shape: tuple[int, ...], expected_shapes: Mapping[str, tuple[int, ...]] | None) -> None:
    if expected_shapes is None:
        return
    if name not in expected_shapes:
        raise UpdateRejected("unknown_tensor", f"tensor {name!r} is not part of the model being trained", name)
    want = tuple(int(s) for s in expected_shapes[name])
    if tuple(shape) != want:
        raise UpdateRejected("shape", f"tensor {name!r} has shape {tuple(shape)}, expected {want}", name)


def validate_sparse(
    sparse: Mapping[str, SparseTensor], expected_shapes: Mapping[str, tuple[int, ...]] | None = None
) -> None:
    """Check in-memory sparse tensors with the same rules (and reasons) as :func:`decode_sparse`."""
    for name, st in sparse.items():
        if not isinstance(name, str) or not name or len(name.encode("utf-8")) > MAX_NAME_BYTES:
            raise UpdateRejected("malformed", f"tensor name {name!r} must be 1..{MAX_NAME_BYTES} UTF-8 bytes", None)
        shape = tuple(int(s) for s in st.shape)
        if len(shape) > MAX_NDIM or any(s < 0 for s in shape):
            raise UpdateRejected("shape", f"tensor {name!r} has invalid shape {shape}", name)
        n = numel(shape)
        if n > MAX_ELEMENTS:
            raise UpdateRejected("oversize", f"tensor {name!r} has {n} entries (max {MAX_ELEMENTS})", name)
        check_shape(name, shape, expected_shapes)
        idx = np.asarray(st.indices)
        vals = np.asarray(st.values)
        if idx.ndim != 1 or vals.ndim != 1 or idx.size != vals.size:
            raise UpdateRejected(
                "malformed", f"tensor {name!r}: need 1-D indices and values of equal length", name
            )
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise UpdateRejected("malformed", f"tensor {name!r}: indices must be integers, got {idx.dtype}", name)
        if idx.size > n:
            raise UpdateRejected("index_range", f"tensor {name!r}: k={idx.size} exceeds n={n}", name)
        if idx.size:
            if int(idx.min()) < 0 or int(idx.max()) >= n:
                raise UpdateRejected("index_range", f"tensor {name!r}: an index is outside [0, {n})", name)
            step = np.diff(idx.astype(np.int64))
            if (step < 0).any():
                raise UpdateRejected("unsorted", f"tensor {name!r}: indices are not sorted ascending", name)
            if (step == 0).any():
                raise UpdateRejected("duplicate", f"tensor {name!r}: an index appears twice", name)
            if not np.isfinite(vals.astype(np.float64)).all():
                raise UpdateRejected("nonfinite", f"tensor {name!r}: values contain NaN or Inf", name)
