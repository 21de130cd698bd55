"""Compress next-token distributions for the wire (cloud -> device) and rebuild them on the device.

A full SmolLM2 distribution is 49,152 float32 values (196 KB per token). Generation only needs the
head of the distribution, so the cloud sends the top-k token ids with their log-probs (fp16, or int8
with a scale/offset) plus ``tail_logmass = log(sum of the probabilities of every other token)``.
The device rebuilds a *proper* distribution: the tail tokens share the missing mass uniformly, so a
tail token gets ``tail_logmass - log(V - k)``, never a logit of 0 and never an integer cast. The
rebuilt vector is renormalised (fp16/int8 rounding makes the sum drift by ~1e-3).

``FULL_FP32`` (the whole vocabulary) exists only as the baseline the benchmark compares against.

The protocol version of the CoGenesis service also lives here because it versions this encoding
together with the message layout: a device and a cloud that disagree on it must not talk.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedcogen.protocols import cogen_pb2 as pb

PROTOCOL_VERSION = 2  # v2: speculative steps (rewind, score, silent), LogitBlock, PACKED8
# Largest vocabulary a packet may claim. decode() allocates a vocabulary-long vector, so an
# unchecked uint32 vocab_size would let one 10-byte packet ask for 16 GB.
MAX_VOCAB = 1 << 21
ENCODINGS: dict[str, int] = {"fp16": pb.FP16, "int8": pb.INT8, "fp32": pb.FP32, "full": pb.FULL_FP32,
                             "packed8": pb.PACKED8}
#: PACKED8: log-prob step of the uint8 codes (nats) and the adaptive size rule: the smallest k' with
#: top-k' mass >= 1 - PACKED_EPS, at least PACKED_KMIN and at most the session's k (chosen by
#: measurement: ``fedcogen bench cogen`` reports bytes/token vs agreement, docs/cogenesis-speed.md).
PACKED_STEP = 1.0 / 16.0
PACKED_EPS = 0.01
PACKED_KMIN = 8
PACKED_MAX_VOCAB = 1 << 16


class CodecError(ValueError):
    """A packet is malformed (wrong sizes, ids out of range, unknown encoding)."""


@dataclass(frozen=True)
class CodecConfig:
    """What the device asks for: how many ids and how values are stored."""

    k: int = 64
    encoding: str = "fp16"

    def encoding_value(self) -> int:
        if self.encoding not in ENCODINGS:
            raise CodecError(f"unknown value encoding '{self.encoding}' (choose from {', '.join(ENCODINGS)})")
        return ENCODINGS[self.encoding]


def encoding_name(value: int) -> str:
    for name, v in ENCODINGS.items():
        if v == value:
            return name
    if value == pb.VALUE_ENCODING_UNSPECIFIED:
        return "fp16"
    raise CodecError(f"unknown value encoding {value}")


def encode(logits: torch.Tensor, k: int, encoding: int | str = "fp16", position: int = 0) -> pb.LogitPacket:
    """Encode one next-token distribution given as logits or log-probs (1-D, vocabulary long)."""
    if isinstance(encoding, str):
        encoding = CodecConfig(k, encoding).encoding_value()
    if encoding == pb.VALUE_ENCODING_UNSPECIFIED:
        encoding = pb.FP16
    logp = torch.log_softmax(logits.detach().float().reshape(-1), dim=-1)
    vocab = int(logp.numel())
    if encoding == pb.FULL_FP32:
        return pb.LogitPacket(
            values=logp.numpy().astype("<f4").tobytes(),
            encoding=pb.FULL_FP32,
            vocab_size=vocab,
            tail_logmass=-math.inf,
            position=position,
        )
    if not 1 <= k <= vocab:
        raise CodecError(f"k must be in [1, {vocab}], got {k}")
    if encoding == pb.PACKED8:
        return _encode_packed(logp, k, position)
    values, ids = torch.topk(logp, k)
    if k == vocab:
        tail = -math.inf
    else:
        mask = torch.ones(vocab, dtype=torch.bool)
        mask[ids] = False
        tail = float(torch.logsumexp(logp[mask], dim=0))
    vals = values.numpy()
    packet = pb.LogitPacket(
        ids=ids.tolist(), encoding=encoding, vocab_size=vocab, tail_logmass=tail, position=position
    )
    if encoding == pb.FP16:
        packet.values = np.clip(vals, -65000.0, 0.0).astype("<f2").tobytes()
    elif encoding == pb.FP32:
        packet.values = vals.astype("<f4").tobytes()
    elif encoding == pb.INT8:
        finite = vals[np.isfinite(vals)]
        hi = float(finite.max()) if finite.size else 0.0
        lo = float(finite.min()) if finite.size else 0.0
        scale = (hi - lo) / 255.0 if hi > lo else 1.0
        codes = np.clip(np.round((np.nan_to_num(vals, neginf=lo) - lo) / scale), 0, 255).astype(np.uint8)
        packet.values, packet.scale, packet.offset = codes.tobytes(), scale, lo
    else:
        raise CodecError(f"unknown value encoding {encoding}")
    return packet


def _encode_packed(logp: torch.Tensor, k: int, position: int) -> pb.LogitPacket:
    """uint16 ids + uint8 codes below the top value; k adapts to the distribution's own spread."""
    vocab = int(logp.numel())
    if vocab > PACKED_MAX_VOCAB:
        raise CodecError(f"packed8 needs a vocabulary of at most {PACKED_MAX_VOCAB} (uint16 ids), this one has {vocab}")
    values, ids = torch.topk(logp, k)
    cum = values.double().exp().cumsum(0)
    kk = max(min(PACKED_KMIN, k), min(k, int((cum < 1.0 - PACKED_EPS).sum()) + 1))
    values, ids = values[:kk], ids[:kk]
    mass = float(cum[kk - 1])
    tail = math.log1p(-mass) if mass < 1.0 - 1e-12 and kk < vocab else -math.inf
    top = float(values[0])
    codes = np.clip(np.round((top - values.numpy()) / PACKED_STEP), 0, 255).astype(np.uint8)
    payload = ids.numpy().astype("<u2").tobytes() + codes.tobytes()
    return pb.LogitPacket(values=payload, offset=top, tail_logmass=tail, encoding=pb.PACKED8, vocab_size=vocab,
                          position=position)


def _unpack(packet: pb.LogitPacket, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    if packet.ids:
        raise CodecError("a packed8 packet carries its ids inside values")
    n = len(packet.values)
    if n == 0 or n % 3:
        raise CodecError(f"packed8 packet has {n} value bytes, expected 3 per entry")
    k = n // 3
    if not math.isfinite(packet.offset) or packet.offset > 1e-3:
        raise CodecError(f"packed8 packet has a bad top value {packet.offset}")
    ids = np.frombuffer(packet.values[: 2 * k], dtype="<u2").astype(np.int64)
    codes = np.frombuffer(packet.values[2 * k:], dtype=np.uint8).astype(np.float32)
    return ids, np.float32(packet.offset) - codes * np.float32(PACKED_STEP)


def _values(packet: pb.LogitPacket, count: int) -> np.ndarray:
    enc = packet.encoding or pb.FP16
    width = {pb.FP16: 2, pb.FP32: 4, pb.FULL_FP32: 4, pb.INT8: 1}.get(enc)  # (PACKED8: see _unpack)
    if width is None:
        raise CodecError(f"unknown value encoding {enc}")
    if len(packet.values) != count * width:
        raise CodecError(f"packet has {len(packet.values)} value bytes, expected {count * width}")
    if enc == pb.FP16:
        vals = np.frombuffer(packet.values, dtype="<f2").astype(np.float32)
    elif enc in (pb.FP32, pb.FULL_FP32):
        vals = np.frombuffer(packet.values, dtype="<f4").astype(np.float32)
    else:
        if not (math.isfinite(packet.offset) and math.isfinite(packet.scale) and packet.scale >= 0):
            raise CodecError(f"int8 packet has a bad scale/offset ({packet.scale}, {packet.offset})")
        codes = np.frombuffer(packet.values, dtype=np.uint8).astype(np.float32)
        with np.errstate(over="ignore"):
            vals = packet.offset + codes * np.float32(packet.scale)
    if not np.isfinite(vals).all():
        raise CodecError("packet values contain NaN or Inf")
    return vals


def _normalise(vec: torch.Tensor) -> torch.Tensor:
    # float64 normaliser: summing 49k float32 terms drifts by ~1e-5, enough to bias fused argmaxes.
    return torch.log_softmax(vec.double(), dim=-1).float()


def decode(packet: pb.LogitPacket, vocab_size: int | None = None) -> torch.Tensor:
    """Rebuild a full, normalised log-prob vector (float32, vocabulary long) from a packet.

    The tail tokens share the missing mass uniformly. (A tail shaped by the device's own distribution
    was measured and is worse: it lifts the device's favourites above their true cloud values;
    docs/cogenesis-speed.md.)
    """
    vocab = int(packet.vocab_size or vocab_size or 0)
    if vocab_size is not None and packet.vocab_size and packet.vocab_size != vocab_size:
        raise CodecError(f"packet vocabulary {packet.vocab_size} != expected {vocab_size}")
    if vocab <= 0:
        raise CodecError("packet has no vocabulary size")
    if vocab > MAX_VOCAB:  # checked before anything vocabulary-long is allocated
        raise CodecError(f"packet vocabulary {vocab} exceeds the limit of {MAX_VOCAB}")
    if packet.encoding == pb.FULL_FP32:
        if packet.ids:
            raise CodecError("a FULL_FP32 packet carries no ids")
        return _normalise(torch.from_numpy(_values(packet, vocab).copy()))
    if packet.encoding == pb.PACKED8:
        id_array, raw_vals = _unpack(packet, vocab)
    else:
        id_array, raw_vals = np.asarray(packet.ids, dtype=np.int64), None
    k = len(id_array)
    if not 1 <= k <= vocab:
        raise CodecError(f"packet has {k} ids for a vocabulary of {vocab}")
    tail = float(packet.tail_logmass)
    if math.isnan(tail) or tail == math.inf:
        raise CodecError(f"packet tail_logmass is {tail}")
    if int(id_array.max()) >= vocab:
        raise CodecError(f"packet id {int(id_array.max())} outside vocabulary of {vocab}")
    if np.unique(id_array).size != k:
        raise CodecError("packet repeats a token id")
    ids = torch.from_numpy(id_array)
    vals = torch.from_numpy((raw_vals if raw_vals is not None else _values(packet, k)).copy())
    if k < vocab:
        if not math.isfinite(tail):
            # The top-k carried (numerically) all the mass: tail tokens get a tiny, finite share.
            tail = float(torch.logsumexp(vals, 0)) - 40.0
        out = torch.full((vocab,), tail - math.log(vocab - k), dtype=torch.float32)
    else:
        out = torch.empty(vocab, dtype=torch.float32)
    out[ids] = vals
    return _normalise(out)


def encode_block(logits: torch.Tensor, k: int, encoding: int | str = "fp16", position: int = 0) -> pb.LogitBlock:
    """Encode several next-token distributions ([n, V]) as one block (a scored speculative draft).

    Fields every packet shares (vocabulary, encoding, position) are stated once in the block.
    """
    rows = [encode(row, k, encoding) for row in logits]
    for p in rows:
        p.ClearField("vocab_size")
        p.ClearField("encoding")
        p.ClearField("position")
    enc = CodecConfig(k, encoding).encoding_value() if isinstance(encoding, str) else (encoding or pb.FP16)
    return pb.LogitBlock(packets=rows, vocab_size=int(logits.shape[-1]), encoding=enc, position=position)


def decode_block(block: pb.LogitBlock, vocab_size: int | None = None) -> list[torch.Tensor]:
    """Rebuild every distribution of a block (see :func:`decode`)."""
    out = []
    for p in block.packets:
        full = pb.LogitPacket()
        full.CopyFrom(p)
        full.vocab_size, full.encoding = block.vocab_size, block.encoding or pb.FP16
        out.append(decode(full, vocab_size))
    return out


_FINGERPRINTS: dict[int, str] = {}


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Short hash of a tokenizer's token -> id map; equal fingerprints = logit fusion is meaningful."""
    key = id(tokenizer)
    if key not in _FINGERPRINTS:
        vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
        digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode("utf-8")).hexdigest()
        _FINGERPRINTS[key] = f"{len(vocab)}:{digest[:16]}"
    return _FINGERPRINTS[key]


def packet_bytes(packet: pb.LogitPacket) -> int:
    """Serialized size of a packet on the wire (protobuf payload, excluding gRPC/HTTP2 framing)."""
    return packet.ByteSize()
