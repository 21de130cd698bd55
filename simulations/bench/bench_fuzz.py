"""`fedcogen bench fuzz`: hostile bytes against every decoder that reads untrusted input.

Why: the sparse-update decoder and the server's validation path read bytes from devices, the logit
decoder reads bytes from the cloud. Each must answer malformed input with its own validation error
(``UpdateRejected`` / ``CodecError`` / protobuf ``DecodeError``), never crash, never let a bad update
reach the aggregate, and never allocate memory in proportion to a *claimed* size. This benchmark
feeds thousands of malformed, truncated, oversized, NaN and wrong-shape blobs to

* ``sparse_codec.decode_sparse`` (with the adapter's tensor schema and a byte cap, as a server calls it),
* ``logit_codec.decode`` (from raw packet bytes, as a device receives them),
* ``RoundAggregator.offer`` (the server's whole update-validation path),

and reports counts plus the peak extra memory of any single call (``tracemalloc``; numpy buffers
are traced, torch's are not, so the RSS growth of the process is reported beside it).
"""

from __future__ import annotations

import resource
import struct
import time
import tracemalloc
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from google.protobuf.message import DecodeError

from fedcogen.protocols import cogen_pb2 as pb
from fedcogen.protocols.codecs import index_coding as ic
from fedcogen.protocols.codecs import logit_codec
from fedcogen.protocols.codecs import sparse_codec as codec
from fedcogen.server.fl.aggregation import RoundAggregator, ValidationLimits

SHAPES: dict[str, tuple[int, ...]] = {
    "layers.0.q_proj.lora_A.weight": (8, 576),
    "layers.0.q_proj.lora_B.weight": (576, 8),
    "layers.0.v_proj.lora_A.weight": (8, 576),
    "layers.0.v_proj.lora_B.weight": (192, 8),
}
_DIGEST = codec.TensorSchema.from_shapes(SHAPES).digest
VOCAB = 49_152  # SmolLM2's vocabulary
SPARSE_KINDS = (
    "flip", "flip_crc", "truncate", "extend", "garbage", "nan", "inf", "wrong_schema", "unknown_tensor",
    "oversize", "huge_k", "lying_index_len", "short_values", "huge_count", "rice_long", "rice_param",
    "varint_long", "bitmap_bits", "duplicate", "out_of_range", "huge_gap", "int4_params", "int4_padding",
    "sign1_scale", "sign1_padding",
)
LOGIT_KINDS = (
    "nan", "inf", "int8_scale", "dup_ids", "id_range", "huge_vocab", "value_bytes", "no_ids", "too_many_ids",
    "encoding", "tail", "full_with_ids", "full_len", "truncate", "garbage", "flip",
)


@dataclass
class FuzzConfig:
    """How many blobs, with which seed, against which caps."""

    blobs: int = 10_000
    seed: int = 0
    max_bytes: int = 256 * 1024  # server byte cap for one update (fuzz blobs stay small)
    memory_bound_mb: float = 100.0


def _fix(blob: bytearray) -> bytes:
    """Rewrite the total length and CRC so the parser itself is exercised, not only the checksum."""
    struct.pack_into("<I", blob, 5, len(blob))
    struct.pack_into("<I", blob, len(blob) - 4, zlib.crc32(bytes(blob[:-4])) & 0xFFFFFFFF)
    return bytes(blob)


def _record(gap: int, k: int, coding: str, idx: bytes, vals: bytes, **kw: Any) -> bytes:
    """One forged record at schema position ``gap`` (a valid length and CRC around it)."""
    body = bytearray()
    ic.write_varint(body, kw.pop("count", 1))
    quant = kw.pop("quant", "fp32")
    params = kw.pop("params", {"int8": (1.0,), "int4": (0.5, 0.25), "sign1": (1.0,)}.get(quant, ()))
    digest = kw.pop("digest", _DIGEST)
    codec._append_record(body, gap, k, coding, quant, params, idx, vals, **kw)
    return codec._assemble(bytes(body), digest)


def _make_good_blob(rng: np.random.Generator) -> bytes:
    update = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    cfg = codec.CodecConfig(
        density=float(rng.choice([0.01, 0.1, 0.5])),
        quant=str(rng.choice(["fp32", "fp16", "int8", "int4", "sign1"])),
        index_coding=str(rng.choice(["auto", "rice", "delta_varint", "bitmap"])),
    )
    return codec.encode_sparse(codec.topk_sparsify(update, cfg), cfg, SHAPES)


_POOLS: dict[str, list[Any]] = {}


def _pooled(kind: str, make: Callable[[np.random.Generator], Any], rng: np.random.Generator) -> Any:
    """One of 24 valid inputs made once per process (encoding is slow; mutating them is not)."""
    if kind not in _POOLS:
        _POOLS[kind] = [make(np.random.default_rng(1000 + i)) for i in range(24)]
    pool = _POOLS[kind]
    return pool[int(rng.integers(0, len(pool)))]


def _good_blob(rng: np.random.Generator) -> bytes:
    return _pooled("sparse", _make_good_blob, rng)


def malformed_sparse(rng: np.random.Generator, kind: str, max_bytes: int) -> bytes:
    """One malformed sparse-update blob of the given kind (``flip_crc`` may, rarely, stay valid)."""
    rows, cols = SHAPES["layers.0.q_proj.lora_A.weight"]  # schema position 0
    n = rows * cols
    good = _good_blob(rng)
    f32 = np.ones(4, np.float32).tobytes()
    if kind == "flip":
        b = bytearray(good)
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(0, len(b)))] ^= int(rng.integers(1, 256))
        return bytes(b)
    if kind == "flip_crc":
        b = bytearray(good)
        b[int(rng.integers(9, len(b) - 4))] ^= int(rng.integers(1, 256))
        return _fix(b)
    if kind == "truncate":
        return good[: int(rng.integers(0, len(good) - 1))]
    if kind == "extend":
        return good + rng.bytes(int(rng.integers(1, 64)))
    if kind == "garbage":
        return (codec.MAGIC if rng.random() < 0.5 else b"") + rng.bytes(int(rng.integers(0, 2000)))
    if kind in ("nan", "inf"):
        vals = np.ones(4, np.float32)
        vals[int(rng.integers(0, 4))] = np.nan if kind == "nan" else np.inf
        return _record(0, 4, "delta_varint", bytes([1, 2, 3, 4]), vals.tobytes())
    if kind == "wrong_schema":  # encoded for another adapter (rank, targets or mode differ)
        other = codec.TensorSchema.from_shapes({**SHAPES, "layers.0.q_proj.lora_A.weight": (cols, rows + 1)})
        return _record(0, 4, "delta_varint", bytes([1, 2, 3, 4]), f32, digest=other.digest)
    if kind == "unknown_tensor":  # a position past the schema's last tensor
        return _record(len(SHAPES) + int(rng.integers(0, 100)), 4, "delta_varint", bytes([1, 2, 3, 4]), f32)
    if kind == "oversize":
        return good + bytes(max_bytes)
    if kind == "huge_k":  # claims almost every entry but carries 4 values
        return _record(0, n - int(rng.integers(0, 8)), "rice", bytes([0, 0xFF]), f32)
    if kind == "lying_index_len":
        return _record(0, 4, "delta_varint", bytes([1, 2, 3, 4]), f32, index_len=int(rng.integers(5, 1 << 40)))
    if kind == "short_values":  # value payload shorter than k values need (its length is implied)
        return _record(0, 4, "delta_varint", bytes([1, 2, 3, 4]), f32[: int(rng.integers(0, 16))])
    if kind == "huge_count":
        return _record(0, 4, "delta_varint", bytes([1, 2, 3, 4]), f32, count=int(rng.integers(2, 1 << 62)))
    if kind == "rice_long":  # a near-cap payload of zero bits: unary codes that never end
        size = int(rng.integers(1000, max_bytes // 2))
        return _record(0, 4, "rice", bytes([int(rng.integers(0, 4))]) + bytes(size), f32)
    if kind == "rice_param":
        return _record(0, 4, "rice", bytes([int(rng.integers(13, 256)), 0xFF, 0xFF]), f32)
    if kind == "varint_long":
        return _record(0, 4, "delta_varint", b"\x80" * int(rng.integers(6, 5000)) + b"\x01", f32)
    if kind == "bitmap_bits":
        bits = bytearray(rng.bytes((n + 7) // 8))
        return _record(0, 4, "bitmap", bytes(bits), f32)
    if kind == "duplicate":
        return _record(0, 4, "delta_varint", bytes([1, 0, 3, 4]), f32)
    if kind == "out_of_range":
        return _record(0, 1, "delta_varint", ic.encode_varints(np.array([n + 1])), f32[:4])
    if kind == "huge_gap":  # a tensor position far beyond any schema (up to 63 bits)
        return _record(int(rng.integers(1 << 20, 1 << 62)), 4, "rice", bytes([30, 0xFF]), f32)
    if kind == "int4_params":  # NaN, infinite or negative range of the 4-bit levels
        bad = float(rng.choice([np.nan, np.inf, -1.0]))
        params = (bad, 1.0) if rng.random() < 0.5 else (1.0, bad)
        return _record(0, 4, "delta_varint", bytes([1, 2, 3, 4]), b"\x77\x77", quant="int4", params=params)
    if kind == "int4_padding":  # an odd k leaves a high nibble that must be zero
        return _record(0, 3, "delta_varint", bytes([1, 2, 3]), bytes([0x11, int(rng.integers(0x10, 0x100))]),
                       quant="int4")
    if kind == "sign1_scale":  # NaN, infinite or negative scale of the 1-bit values
        params = (float(rng.choice([np.nan, np.inf, -1.0])),)
        return _record(0, 4, "delta_varint", bytes([1, 2, 3, 4]), b"\x05", quant="sign1", params=params)
    if kind == "sign1_padding":  # k = 3 signs in one byte: the 5 high bits must be zero
        return _record(0, 3, "delta_varint", bytes([1, 2, 3]), bytes([int(rng.integers(1, 32)) << 3 | 0x5]),
                       quant="sign1", params=(1.0,))
    raise ValueError(f"unknown sparse fuzz kind {kind!r}")


def _make_good_packet(rng: np.random.Generator) -> pb.LogitPacket:
    logits = torch.from_numpy(rng.normal(size=VOCAB).astype(np.float32) * 3)
    return logit_codec.encode(logits, int(rng.choice([1, 8, 64, 256])), str(rng.choice(["fp16", "fp32", "int8"])))


def malformed_logit(rng: np.random.Generator, kind: str) -> bytes:
    """Serialized bytes of one malformed ``LogitPacket`` (``truncate``/``flip`` may stay valid)."""
    p = pb.LogitPacket()
    p.CopyFrom(_pooled("logit", _make_good_packet, rng))
    k = len(p.ids)
    if kind in ("nan", "inf"):
        p.encoding, bad = pb.FP32, np.nan if kind == "nan" else float(rng.choice([np.inf, -np.inf]))
        vals = np.full(k, -5.0, np.float32)
        vals[int(rng.integers(0, k))] = bad
        p.values = vals.tobytes()
    elif kind == "int8_scale":
        p.encoding, p.values = pb.INT8, bytes(k)
        p.scale, p.offset = float(rng.choice([np.nan, np.inf, -1.0])), -3.0
    elif kind == "dup_ids":
        ids = list(p.ids) if k > 1 else [5, 5]
        ids[-1] = ids[0]
        del p.ids[:]
        p.ids.extend(ids)
        if k == 1:
            p.values = p.values * 2
    elif kind == "id_range":
        p.ids[int(rng.integers(0, k))] = int(rng.integers(VOCAB, 1 << 32))
    elif kind == "huge_vocab":
        p.vocab_size = int(rng.integers(logit_codec.MAX_VOCAB + 1, 1 << 32))
    elif kind == "value_bytes":
        p.values = p.values[: max(0, len(p.values) - int(rng.integers(1, 4)))] if rng.random() < 0.5 else (
            p.values + rng.bytes(int(rng.integers(1, 64))))
    elif kind == "no_ids":
        del p.ids[:]
    elif kind == "too_many_ids":
        p.vocab_size = max(1, k - 1)
    elif kind == "encoding":
        p.encoding = int(rng.integers(5, 1000))
    elif kind == "tail":
        p.tail_logmass = float(rng.choice([np.nan, np.inf]))
    elif kind == "full_with_ids":
        p.encoding, p.values = pb.FULL_FP32, np.zeros(VOCAB, "<f4").tobytes()
    elif kind == "full_len":
        del p.ids[:]
        p.encoding, p.values = pb.FULL_FP32, np.zeros(int(rng.integers(0, VOCAB)), "<f4").tobytes()
    raw = p.SerializeToString()
    if kind == "truncate":
        return raw[: int(rng.integers(0, len(raw)))]
    if kind == "garbage":
        return rng.bytes(int(rng.integers(0, 600)))
    if kind == "flip":
        b = bytearray(raw)
        b[int(rng.integers(0, len(b)))] ^= int(rng.integers(1, 256))
        return bytes(b)
    return raw


def _decode_logit_bytes(raw: bytes, vocab: int | None) -> torch.Tensor:
    return logit_codec.decode(pb.LogitPacket.FromString(raw), vocab)


class _Tally:
    """Outcome counts of one target, plus the peak extra memory of any single call."""

    def __init__(self) -> None:
        self.fed = self.rejected = self.accepted = self.crashes = 0
        self.reasons: Counter = Counter()
        self.crash_examples: list[str] = []
        self.accepted_kinds: Counter = Counter()
        self.peak_bytes = 0

    def call(self, fn: Callable[[], Any], expected: tuple[type[BaseException], ...], kind: str = "") -> Any:
        self.fed += 1
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        try:
            out = fn()
        except expected as exc:
            if getattr(exc, "internal", False):  # a decoder bug the codec converted: still a crash
                self._crash(exc)
            else:
                self.rejected += 1
                self.reasons[getattr(exc, "reason", type(exc).__name__)] += 1
            out = exc
        except Exception as exc:  # noqa: BLE001 - counting crashes is the point
            self._crash(exc)
            out = exc
        else:
            self.accepted += 1
            self.accepted_kinds[kind] += 1
        self.peak_bytes = max(self.peak_bytes, tracemalloc.get_traced_memory()[1] - base)
        return out

    def _crash(self, exc: BaseException) -> None:
        self.crashes += 1
        if len(self.crash_examples) < 5:
            self.crash_examples.append(f"{type(exc).__name__}: {exc}")

    def summary(self) -> dict[str, Any]:
        return {
            "fed": self.fed, "rejected": self.rejected, "accepted": self.accepted, "crashes": self.crashes,
            "peak_extra_memory_mb": round(self.peak_bytes / 2**20, 3), "reasons": dict(self.reasons),
            "accepted_kinds": {k: v for k, v in self.accepted_kinds.items() if v > 0},
            "crash_examples": self.crash_examples,
        }


def run_fuzz(cfg: FuzzConfig = FuzzConfig()) -> dict[str, Any]:
    """Feed ``cfg.blobs`` malformed inputs (40 % sparse decoder, 30 % logit decoder, 30 % ``offer``)."""
    import logging

    rng = np.random.default_rng(cfg.seed)
    n_sparse = int(cfg.blobs * 0.4)
    n_logit = int(cfg.blobs * 0.3)
    n_offer = cfg.blobs - n_sparse - n_logit
    sparse, logit, offer = _Tally(), _Tally(), _Tally()
    limits = ValidationLimits(max_bytes=cfg.max_bytes)
    agg = RoundAggregator(SHAPES, limits)
    aggregated_bad = valid_offered = 0
    agg_log = logging.getLogger("fedcogen.server.fl.aggregation")
    old_level, agg_log.level = agg_log.level, logging.ERROR  # one warning per rejection would flood
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    tracemalloc.start()
    try:
        for i in range(n_sparse):
            kind = SPARSE_KINDS[i % len(SPARSE_KINDS)]
            blob = malformed_sparse(rng, kind, cfg.max_bytes)
            sparse.call(lambda b=blob: codec.decode_sparse(b, SHAPES, cfg.max_bytes), (codec.UpdateRejected,), kind)
        for i in range(n_logit):
            kind = LOGIT_KINDS[i % len(LOGIT_KINDS)]
            raw = malformed_logit(rng, kind)
            vocab = VOCAB if (i // len(LOGIT_KINDS)) % 2 else None  # every kind meets both
            logit.call(lambda r=raw, v=vocab: _decode_logit_bytes(r, v), (logit_codec.CodecError, DecodeError), kind)
        # the server path gets only inputs that are bad for certain (no "flip_crc": a flip may stay valid)
        offer_kinds = [k for k in SPARSE_KINDS if k != "flip_crc"]
        for i in range(n_offer):
            if i % 10 == 0:  # a flood with valid updates mixed in: none of them may be lost
                valid_offered += 1
                agg.offer(f"good{i}", _good_blob(rng), 1.0)
            kind = offer_kinds[i % len(offer_kinds)]
            blob = malformed_sparse(rng, kind, cfg.max_bytes)
            reason = offer.call(lambda b=blob, c=f"evil{i}": agg.offer(c, b, 1.0), (), kind)
            if reason is None:
                aggregated_bad += 1
            elif isinstance(reason, str):  # offer returns the reason instead of raising
                offer.accepted -= 1
                offer.accepted_kinds[kind] -= 1
                offer.rejected += 1
                offer.reasons[reason] += 1
    finally:
        tracemalloc.stop()
        agg_log.level = old_level
    # logit "truncate"/"flip" may leave a valid packet, sparse "flip_crc" a valid update: not failures
    totals = [sparse, logit, offer]
    peak_mb = max(t.peak_bytes for t in totals) / 2**20
    crashes = sum(t.crashes for t in totals)
    good_accepted = sum(1 for c in agg.accepted if c.startswith("good"))
    aggregated_bad = max(aggregated_bad, len(agg.accepted) - good_accepted)
    lost_valid = valid_offered - good_accepted
    result = {
        "config": asdict(cfg),
        "blobs": sum(t.fed for t in totals),
        "rejected": sum(t.rejected for t in totals),
        "crashes": crashes,
        "aggregated_bad_updates": aggregated_bad,
        "valid_updates_mixed_in": valid_offered,
        "lost_valid_updates": lost_valid,
        "peak_extra_memory_mb": round(peak_mb, 3),
        "rss_growth_mb": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024, 1),
        "seconds": round(time.perf_counter() - t0, 2),
        "targets": {"sparse_decoder": sparse.summary(), "logit_decoder": logit.summary(),
                    "server_offer": offer.summary()},
    }
    result["ok"] = crashes == 0 and aggregated_bad == 0 and lost_valid == 0 and peak_mb < cfg.memory_bound_mb
    return result


__all__ = ["FuzzConfig", "run_fuzz", "malformed_sparse", "malformed_logit"]
