"""Top-k selection of the entries an update sends (deterministic ties, per tensor or global)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedcogen.protocols.codecs.sparse_format import CodecConfig, SparseTensor, sendable_array


def topk_flat(absval: np.ndarray, k: int) -> np.ndarray:
    """Sorted flat positions of the k largest |v|; ties go to the lower position (deterministic)."""
    n = absval.size
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    if k >= n:
        return np.arange(n, dtype=np.int64)
    threshold = np.partition(absval, n - k)[n - k]
    above = np.flatnonzero(absval > threshold)
    ties = np.flatnonzero(absval == threshold)[: k - above.size]
    return np.union1d(above, ties).astype(np.int64)


def topk_sparsify(tensors: Mapping[str, Any], cfg: CodecConfig) -> dict[str, SparseTensor]:
    """Keep the largest-magnitude entries (selection only; values stay full precision float32).

    ``per_tensor``: k_t = max(1, round(density * n_t)); ``global``: one threshold over all tensors,
    k = round(density * total). Both are capped at the number of nonzero entries, since sending a
    zero costs bits and carries nothing (so an all-zero tensor gets k = 0). Ties are broken by
    lower flat position (for ``global``, tensors are concatenated in sorted-name order) so every
    run, device and server picks the same support.
    """
    arrays: dict[str, np.ndarray] = {}
    for name, t in tensors.items():
        a = sendable_array(name, t)
        arrays[name] = a
    out: dict[str, SparseTensor] = {}
    if cfg.scope == "per_tensor":
        for name, a in arrays.items():
            flat = a.reshape(-1)
            absval = np.abs(flat)
            nnz = int(np.count_nonzero(absval))
            k = min(nnz, max(1, int(round(cfg.density * flat.size))))
            idx = topk_flat(absval, k)
            out[name] = SparseTensor(idx, flat[idx].astype(np.float32), tuple(a.shape))
        return out
    names = sorted(arrays)
    flats = [arrays[nm].reshape(-1) for nm in names]
    total = sum(f.size for f in flats)
    absval = np.abs(np.concatenate(flats)) if flats else np.empty(0, np.float32)
    k = min(int(np.count_nonzero(absval)), int(round(cfg.density * total)))
    chosen = topk_flat(absval, k)
    offsets = np.cumsum([0] + [f.size for f in flats])
    bounds = np.searchsorted(chosen, offsets)
    for i, nm in enumerate(names):
        idx = chosen[bounds[i] : bounds[i + 1]] - offsets[i]
        out[nm] = SparseTensor(idx.astype(np.int64), flats[i][idx].astype(np.float32), tuple(arrays[nm].shape))
    return {nm: out[nm] for nm in arrays}  # keep the caller's order
