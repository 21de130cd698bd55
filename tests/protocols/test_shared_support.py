"""Shared random supports: every party derives the same positions from (run seed, round, tensor name), the
blob carries only values (format v3: header, seed, per-record k/mode/params, values), a receiver that knows
the round refuses any other seed, size or an index-carrying blob, and error feedback keeps what is not sent."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from fedcogen.protocols.codecs import sparse_codec as sc
from fedcogen.protocols.codecs.index_coding import write_varint
from fedcogen.protocols.codecs.shared_support import (
    SupportRule,
    round_support_seed,
    shared_sparsify,
    support_size,
    tensor_support,
)
from fedcogen.protocols.codecs.value_quant import QUANT_PARAMS, value_bytes

SHAPES = {"layer.0.lora_B": (64, 16), "layer.1.lora_B": (96, 16), "layer.2.lora_B": (7, 3)}


def _update(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


def _cfg(round_: int, density: float = 0.05, quant: str = "int4", run_seed: int = 0) -> sc.CodecConfig:
    return sc.CodecConfig(density=density, quant=quant, shared_seed=round_support_seed(run_seed, round_))


@pytest.mark.parametrize("quant", ["fp32", "fp16", "int8", "int4", "sign1"])
def test_round_trip_puts_every_value_back_at_the_shared_support(quant: str) -> None:
    upd = _update()
    cfg = _cfg(3, quant=quant)
    sparse = sc.sparsify(upd, cfg)
    blob = sc.encode_sparse(sparse, cfg, SHAPES)
    back = sc.decode_sparse(blob, SHAPES, expect=SupportRule(cfg.shared_seed, 0.05))
    assert set(back) == set(SHAPES)
    for name, st in back.items():
        n = int(np.prod(SHAPES[name]))
        np.testing.assert_array_equal(st.indices, tensor_support(cfg.shared_seed, name, n, support_size(n, 0.05)))
        np.testing.assert_array_equal(st.indices, sparse[name].indices)
        if quant == "fp32":
            np.testing.assert_array_equal(st.values, upd[name].reshape(-1)[st.indices])
        elif quant == "sign1":
            assert (np.sign(st.values) == np.sign(sparse[name].values)).all()
        else:  # int8 / int4 / fp16: within the quantiser's step
            assert np.abs(st.values - sparse[name].values).max() <= np.abs(sparse[name].values).max() / 6


def test_client_and_server_derive_the_same_support_and_each_round_another() -> None:
    n, k = 1024, 20
    a = tensor_support(round_support_seed(5, 7), "x.lora_B", n, k)
    b = tensor_support(round_support_seed(5, 7), "x.lora_B", n, k)  # the other side, from the same public values
    np.testing.assert_array_equal(a, b)
    assert a.size == k and np.unique(a).size == k and (np.diff(a) > 0).all() and 0 <= a.min() and a.max() < n
    assert not np.array_equal(a, tensor_support(round_support_seed(5, 8), "x.lora_B", n, k))  # next round
    assert not np.array_equal(a, tensor_support(round_support_seed(6, 7), "x.lora_B", n, k))  # another run
    assert not np.array_equal(a, tensor_support(round_support_seed(5, 7), "y.lora_B", n, k))  # another tensor
    # a denser support of the same round contains the sparser one (a broadcast at down >= up density)
    assert set(a) <= set(tensor_support(round_support_seed(5, 7), "x.lora_B", n, 3 * k))
    # over many rounds every entry is visited (error feedback sends each in its turn), about equally often
    hits = np.zeros(n)
    for r in range(1, 601):
        hits[tensor_support(round_support_seed(5, r), "x.lora_B", n, k)] += 1
    assert hits.min() >= 1 and hits.max() <= 3 * 600 * k / n


def test_blob_is_header_plus_values_with_no_index_bytes() -> None:
    upd = _update(1)
    for quant in ("int4", "sign1", "int8"):
        cfg = _cfg(2, density=0.02, quant=quant)
        blob = sc.encode_sparse(sc.sparsify(upd, cfg), cfg, SHAPES)
        expected = sc.SHARED_FIXED_BYTES
        for shape in SHAPES.values():
            k = support_size(int(np.prod(shape)), 0.02)
            # gap varint (1) + k varint + mode byte + f32 params + values
            expected += 1 + (1 if k < 128 else 2) + 1 + 4 * QUANT_PARAMS[quant] + value_bytes(quant, k)
        assert len(blob) == expected
        stats = sc.blob_stats(blob, SHAPES)
        assert stats["index_bits"] == 0 and {t["coding"] for t in stats["tensors"]} == {"shared"}
        assert stats["k"] == sum(support_size(int(np.prod(s)), 0.02) for s in SHAPES.values())
        # the same entries by top-k with indices cost more: index bits are what this saves
        topk = sc.CodecConfig(density=0.02, quant=quant)
        assert len(sc.encode_sparse(sc.topk_sparsify(upd, topk), topk, SHAPES)) > len(blob) - 8


def test_error_feedback_carries_the_unsent_mass_to_later_rounds() -> None:
    """The same update every round, sent (fp32) at each round's support with error feedback: an entry's
    residual is exactly its update times the rounds since its support last covered it, and sent + residual
    is everything so far; without feedback, what was off the support would be lost for good."""
    upd = _update(2)
    residual = None
    total_sent = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    last_sent = {k: np.zeros(int(np.prod(s)), int) for k, s in SHAPES.items()}
    rounds = 40
    for r in range(1, rounds + 1):
        blob, sent, residual = sc.compress(upd, _cfg(r, density=0.1, quant="fp32"), residual, SHAPES)
        for k, st in sc.decode_sparse(blob, SHAPES).items():
            total_sent[k] += sent[k]
            last_sent[k][st.indices] = r
    for k in SHAPES:
        age = (rounds - last_sent[k]).reshape(SHAPES[k])
        np.testing.assert_allclose(residual[k], upd[k] * age, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(total_sent[k] + residual[k], rounds * upd[k], rtol=1e-4, atol=1e-3)
        assert age.mean() < rounds / 3  # most of the mass has arrived: the residual is recent rounds only


def test_a_receiver_refuses_another_rounds_seed_another_size_and_indexed_blobs() -> None:
    upd = _update(3)
    cfg = _cfg(4)
    rule = SupportRule(cfg.shared_seed, 0.05)
    blob = sc.encode_sparse(sc.sparsify(upd, cfg), cfg, SHAPES)
    sc.decode_sparse(blob, SHAPES, expect=rule)  # the right round: accepted
    stale = sc.encode_sparse(sc.sparsify(upd, _cfg(3)), _cfg(3), SHAPES)  # last round's update
    with pytest.raises(sc.UpdateRejected, match="stale or replayed") as ei:
        sc.decode_sparse(stale, SHAPES, expect=rule)
    assert ei.value.reason == "support"
    denser = _cfg(4, density=0.1)  # the right seed, but twice the values per tensor
    with pytest.raises(sc.UpdateRejected, match="shared support at density 0.05 has") as ei:
        sc.decode_sparse(sc.encode_sparse(sc.sparsify(upd, denser), denser, SHAPES), SHAPES, expect=rule)
    assert ei.value.reason == "support"
    topk = sc.CodecConfig(density=0.05, quant="int4")
    with pytest.raises(sc.UpdateRejected, match="explicit indices") as ei:
        sc.decode_sparse(sc.encode_sparse(sc.topk_sparsify(upd, topk), topk, SHAPES), SHAPES, expect=rule)
    assert ei.value.reason == "support"
    # without a rule (a broadcast delta or a catch-up chain link) the blob decodes from its own seed
    assert sc.decode_sparse(stale, SHAPES)["layer.0.lora_B"].k == support_size(64 * 16, 0.05)


def _forge(seed: int, records: list[tuple[int, int, int, bytes]], digest: bytes) -> bytes:
    """A v3 blob from raw records (gap, k, mode byte, params + values), with a valid length and CRC."""
    body = bytearray(struct.pack("<Q", seed))
    write_varint(body, len(records))
    for gap, k, mode, rest in records:
        write_varint(body, gap)
        write_varint(body, k)
        body.append(mode)
        body += rest
    total = sc.HEADER_BYTES + len(body) + 4
    data = sc.MAGIC + bytes([sc.SHARED_VERSION]) + struct.pack("<I", total) + digest + bytes(body)
    return data + struct.pack("<I", zlib.crc32(data) & 0xFFFFFFFF)


def test_hostile_shared_blobs_are_refused_with_a_reason() -> None:
    schema = sc.TensorSchema.from_shapes(SHAPES)
    seed = round_support_seed(0, 1)
    int8 = 2  # QUANTS["int8"]
    ok_rest = struct.pack("<f", 0.1) + bytes(3)
    assert sc.decode_sparse(_forge(seed, [(0, 3, 5 << 4 | int8, ok_rest)], schema.digest), SHAPES)
    bad = {
        "malformed": _forge(seed, [(0, 3, 3 << 4 | int8, ok_rest)], schema.digest),  # delta_varint coding in v3
        "index_range": _forge(seed, [(0, 99999, 5 << 4 | int8, ok_rest)], schema.digest),  # k > n
        "byte_count": _forge(seed, [(0, 3, 5 << 4 | int8, ok_rest[:-1])], schema.digest),  # a value short
    }
    for reason, blob in bad.items():
        with pytest.raises(sc.UpdateRejected) as ei:
            sc.decode_sparse(blob, SHAPES)
        assert ei.value.reason == reason and not ei.value.internal
    with pytest.raises(sc.UpdateRejected, match="empty shared-support record"):
        sc.decode_sparse(_forge(seed, [(0, 0, 5 << 4 | int8, struct.pack("<f", 0.1))], schema.digest), SHAPES)
    # a "shared" record inside an indexed (v2) blob: refused, never read as another coding
    body = bytearray()
    write_varint(body, 1)
    body += bytes([0, 3, 5 << 4 | int8]) + ok_rest
    forged = sc.MAGIC + bytes([2]) + struct.pack("<I", sc.HEADER_BYTES + len(body) + 4) + schema.digest + bytes(body)
    with pytest.raises(sc.UpdateRejected, match="coding 'shared' in a format version 2"):
        sc.decode_sparse(forged + struct.pack("<I", zlib.crc32(forged) & 0xFFFFFFFF), SHAPES)


def test_encoder_refuses_positions_that_are_not_the_shared_support_and_bad_configs() -> None:
    cfg = _cfg(1)
    sparse = shared_sparsify(_update(), 0.05, cfg.shared_seed)
    name = "layer.0.lora_B"
    moved = dict(sparse)
    moved[name] = sc.SparseTensor(np.sort((sparse[name].indices + 1) % 1024), sparse[name].values, SHAPES[name])
    with pytest.raises(sc.UpdateRejected, match="not the shared support") as ei:
        sc.encode_sparse(moved, cfg, SHAPES)
    assert ei.value.reason == "support"
    with pytest.raises(ValueError, match="scope must be 'per_tensor'"):
        sc.CodecConfig(density=0.05, scope="global", shared_seed=1)
    with pytest.raises(ValueError, match="index_coding 'auto'"):
        sc.CodecConfig(density=0.05, index_coding="rice", shared_seed=1)
    with pytest.raises(ValueError, match="u64"):
        sc.CodecConfig(density=0.05, shared_seed=-1)
    with pytest.raises(ValueError, match="u64"):
        SupportRule(2**64, 0.05)
    with pytest.raises(ValueError, match="density"):
        support_size(10, 0.0)
