"""Index codings of the sparse update format: bitmap, LEB128 delta varints and Rice codes.

Every decoder checks each length against ``(n, k)`` before it unpacks anything, so a hostile
payload cannot make it allocate more than an honest encoding would need; every flaw is an
:class:`~fedcogen.protocols.codecs.sparse_format.UpdateRejected`. See :mod:`fedcogen.protocols.codecs.sparse_codec`
for the wire layout.
"""

from __future__ import annotations

import math

import numpy as np

from fedcogen.protocols.codecs.sparse_format import SELECTABLE_CODINGS, UpdateRejected

MAX_RICE_PARAM = 40


def index_bits_bound(n: int, k: int) -> float:
    """log2 C(n, k): bits any code needs on average to name a uniformly random k-subset of n."""
    if k < 0 or n < 0 or k > n:
        raise ValueError(f"index_bits_bound needs 0 <= k <= n, got n={n}, k={k}")
    if k == 0 or k == n:
        return 0.0
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2)


def write_varint(out: bytearray, value: int) -> None:
    if value < 0:
        raise ValueError(f"varint must be non-negative, got {value}")
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def varint_lengths(values: np.ndarray) -> np.ndarray:
    """Bytes per LEB128 value (vectorised, values < 2**63)."""
    v = values.astype(np.uint64, copy=False)
    lengths = np.ones(v.shape, dtype=np.int64)
    for j in range(1, 10):
        lengths += v >= np.uint64(1 << (7 * j))
    return lengths


def encode_varints(values: np.ndarray) -> bytes:
    """LEB128 of many values at once (no per-element Python loop)."""
    v = values.astype(np.uint64, copy=False)
    if v.size == 0:
        return b""
    lengths = varint_lengths(v)
    total = int(lengths.sum())
    owner = np.repeat(np.arange(v.size), lengths)
    starts = np.cumsum(lengths) - lengths
    j = (np.arange(total) - starts[owner]).astype(np.uint64)
    byte = (v[owner] >> (np.uint64(7) * j)) & np.uint64(0x7F)
    cont = (j < (lengths[owner] - 1).astype(np.uint64)).astype(np.uint64) << np.uint64(7)
    return (byte | cont).astype(np.uint8).tobytes()


def rice_cost_bits(gaps: np.ndarray, b: int) -> int:
    return int(gaps.size * (b + 1) + int((gaps >> b).sum()))


def best_rice_param(gaps: np.ndarray, n: int) -> int:
    """The exactly optimal b: cost(b) = k (b + 1) + sum(g >> b) is only searched up to bitlen(max g),
    beyond which every quotient is already 0 and cost only grows."""
    if gaps.size == 0:
        return 0
    top = min(MAX_RICE_PARAM, int(gaps.max()).bit_length())
    return min(range(top + 1), key=lambda b: (rice_cost_bits(gaps, b), b))


def _encode_rice(gaps: np.ndarray, b: int) -> bytes:
    k = gaps.size
    q = gaps >> b
    rem = gaps & ((1 << b) - 1)
    rem_bits = ((rem[:, None] >> np.arange(b - 1, -1, -1, dtype=np.int64)) & 1).astype(np.uint8).reshape(-1)
    unary = np.zeros(int(q.sum()) + k, dtype=np.uint8)
    unary[np.cumsum(q + 1) - 1] = 1
    return bytes([b]) + np.packbits(np.concatenate([rem_bits, unary])).tobytes()


def _decode_rice(payload: bytes | memoryview, n: int, k: int, name: str) -> np.ndarray:
    """Rice-decode k gaps. Every length is checked against (n, k) before anything is unpacked, so a
    hostile payload cannot make the decoder allocate more than its honest encoding would need."""
    if len(payload) < 1:
        raise UpdateRejected("malformed", f"tensor {name!r}: rice payload lacks its parameter byte", name)
    b = payload[0]
    if b > MAX_RICE_PARAM:
        raise UpdateRejected("malformed", f"tensor {name!r}: rice parameter {b} exceeds {MAX_RICE_PARAM}", name)
    if b > (n - 1).bit_length():  # the encoder never picks b above the bit length of the largest gap
        raise UpdateRejected(
            "malformed", f"tensor {name!r}: rice parameter {b} is larger than any gap of a {n}-entry tensor", name
        )
    body_bits = 8 * (len(payload) - 1)
    # Each code is b remainder bits + a unary quotient ending in a 1; the quotients sum to at most
    # (sum of gaps) >> b <= (n - k) >> b. So the honest payload lies between these two bounds.
    min_bits = k * (b + 1)
    max_bits = min_bits + ((n - k) >> b)
    if body_bits < min_bits:
        raise UpdateRejected(
            "byte_count", f"tensor {name!r}: rice payload too short for {k} codes of at least {b + 1} bits", name
        )
    if len(payload) - 1 > (max_bits + 7) // 8:
        raise UpdateRejected(
            "index_range", f"tensor {name!r}: rice payload is longer than {k} gaps inside {n} entries can need", name
        )
    bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8, offset=1))
    unary = bits[k * b :]
    ones_count = int(np.count_nonzero(unary))
    if ones_count < k:
        raise UpdateRejected(
            "byte_count", f"tensor {name!r}: rice payload holds {ones_count} gaps but k={k}", name
        )
    if ones_count > k:
        raise UpdateRejected("malformed", f"tensor {name!r}: rice payload has nonzero padding bits", name)
    ones = np.flatnonzero(unary)
    used_bits = k * b + int(ones[-1]) + 1
    if len(payload) != 1 + (used_bits + 7) // 8:
        raise UpdateRejected(
            "byte_count",
            f"tensor {name!r}: rice payload is {len(payload)} bytes but its codes use {1 + (used_bits + 7) // 8}",
            name,
        )
    q = np.diff(ones, prepend=-1) - 1
    if int(q.max()) > (n >> b):
        raise UpdateRejected("index_range", f"tensor {name!r}: a rice gap points past the end ({n})", name)
    rem = np.zeros(k, dtype=np.int64)
    if b:
        rem_bits = bits[: k * b].reshape(k, b)
        for j in range(b):  # column by column: O(k) int64 memory instead of a k x b int64 matrix
            rem = (rem << 1) | rem_bits[:, j]
    d = ((q << b) | rem) + 1
    return _indices_from_steps(d, n, name)


def _indices_from_steps(d: np.ndarray, n: int, name: str) -> np.ndarray:
    """idx_i = idx_{i-1} + d_i with idx_{-1} = -1; every d must be >= 1 and the last index < n."""
    if d.size == 0:
        return np.empty(0, dtype=np.int64)
    if int(d.min()) < 1:
        raise UpdateRejected("duplicate", f"tensor {name!r}: an index repeats (zero delta)", name)
    if int(d.max()) > n:
        raise UpdateRejected("index_range", f"tensor {name!r}: an index step exceeds the tensor size {n}", name)
    idx = np.cumsum(d) - 1
    if int(idx[-1]) >= n:
        raise UpdateRejected(
            "index_range", f"tensor {name!r}: index {int(idx[-1])} is outside [0, {n})", name
        )
    return idx.astype(np.int64)


def _decode_varints(payload: bytes | memoryview, n: int, k: int, name: str) -> np.ndarray:
    """LEB128-decode k deltas; the payload length is bounded by k (1..5 bytes each) before any work."""
    if len(payload) < k:
        raise UpdateRejected(
            "byte_count", f"tensor {name!r}: delta_varint payload of {len(payload)} bytes holds fewer than k={k} deltas",
            name,
        )
    if len(payload) > 5 * k:  # 5 LEB128 bytes = 35 bits > MAX_ELEMENTS
        raise UpdateRejected("index_range", f"tensor {name!r}: a delta is larger than any tensor", name)
    raw = np.frombuffer(payload, dtype=np.uint8)
    if raw.size and raw[-1] & 0x80:
        raise UpdateRejected("byte_count", f"tensor {name!r}: delta_varint payload ends mid-varint", name)
    is_end = (raw & 0x80) == 0
    n_ends = int(np.count_nonzero(is_end))
    if n_ends != k:
        raise UpdateRejected(
            "byte_count", f"tensor {name!r}: delta_varint payload holds {n_ends} deltas but k={k}", name
        )
    ends = np.flatnonzero(is_end)
    if k == 0:
        return np.empty(0, dtype=np.int64)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if int(lengths.max()) > 5:  # 5 LEB128 bytes = 35 bits > MAX_ELEMENTS
        raise UpdateRejected("index_range", f"tensor {name!r}: a delta is larger than any tensor", name)
    if np.any((lengths > 1) & (raw[ends] == 0)):
        raise UpdateRejected("malformed", f"tensor {name!r}: non-canonical (overlong) varint", name)
    owner = np.repeat(np.arange(k), lengths)
    shift = (np.arange(raw.size) - starts[owner]) * 7
    d = np.add.reduceat((raw & 0x7F).astype(np.int64) << shift, starts)
    return _indices_from_steps(d, n, name)


def coding_payload(coding: str, idx: np.ndarray, n: int) -> bytes:
    if coding in ("none", "dense"):
        return b""
    if coding == "bitmap":
        bits = np.zeros(n, dtype=np.uint8)
        bits[idx] = 1
        return np.packbits(bits).tobytes()
    d = np.diff(idx, prepend=-1)
    if coding == "delta_varint":
        return encode_varints(d)
    gaps = d - 1
    return _encode_rice(gaps, best_rice_param(gaps, n))


def coding_sizes(idx: np.ndarray, n: int) -> dict[str, int]:
    """Exact payload bytes of every selectable coding, computed without encoding."""
    d = np.diff(idx, prepend=-1)
    gaps = d - 1
    b = best_rice_param(gaps, n) if gaps.size else 0
    return {
        "bitmap": (n + 7) // 8,
        "delta_varint": int(varint_lengths(d).sum()),
        "rice": 1 + (rice_cost_bits(gaps, b) + 7) // 8,
    }


def choose_coding(idx: np.ndarray, n: int, requested: str) -> str:
    k = idx.size
    if k == 0:
        return "none"
    if requested != "auto":
        return requested
    if k == n:
        return "dense"
    sizes = coding_sizes(idx, n)
    return min(SELECTABLE_CODINGS, key=lambda c: (sizes[c], SELECTABLE_CODINGS.index(c)))


def decode_indices(coding: str, payload: bytes | memoryview, n: int, k: int, name: str) -> np.ndarray:
    if coding == "none":
        if k != 0 or payload:
            raise UpdateRejected("malformed", f"tensor {name!r}: coding 'none' needs k=0 and no payload", name)
        return np.empty(0, dtype=np.int64)
    if coding == "dense":
        if k != n or payload:
            raise UpdateRejected("malformed", f"tensor {name!r}: coding 'dense' needs k=n and no payload", name)
        return np.arange(n, dtype=np.int64)
    if k == 0:
        raise UpdateRejected("malformed", f"tensor {name!r}: k=0 must use coding 'none'", name)
    if coding == "bitmap":
        if len(payload) != (n + 7) // 8:
            raise UpdateRejected(
                "byte_count", f"tensor {name!r}: bitmap is {len(payload)} bytes, expected {(n + 7) // 8}", name
            )
        bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))
        if bits[n:].any():
            raise UpdateRejected("malformed", f"tensor {name!r}: bitmap has nonzero padding bits", name)
        set_bits = int(np.count_nonzero(bits[:n]))
        if set_bits != k:
            raise UpdateRejected("malformed", f"tensor {name!r}: bitmap has {set_bits} set bits but k={k}", name)
        return np.flatnonzero(bits[:n]).astype(np.int64)
    if coding == "delta_varint":
        return _decode_varints(payload, n, k, name)
    return _decode_rice(payload, n, k, name)
