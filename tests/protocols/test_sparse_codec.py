"""Tests for the sparse update codec (fedcogen.protocols.codecs.sparse_codec).

Property tests (hypothesis) cover round trips of every index coding x quantisation, the size
claims of ``auto`` and the information bound; unit tests cover selection rules, error feedback and
losslessness; the fuzz tests throw > 1000 hostile blobs at the decoder and require UpdateRejected
with a sensible reason every time.
"""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedcogen.protocols.codecs import index_coding as ic
from fedcogen.protocols.codecs import sparse_codec as sc
from fedcogen.protocols.codecs.sparse_codec import (
    CodecConfig,
    SparseTensor,
    UpdateRejected,
    blob_stats,
    compress,
    decode_sparse,
    densify,
    encode_sparse,
    index_bits_bound,
    topk_sparsify,
    validate_sparse,
)

CODINGS = ("bitmap", "delta_varint", "rice", "auto")
QUANTS = ("fp32", "fp16", "int8", "int4")
FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def random_sparse(rng: np.random.Generator, n: int, k: int, shape=None, scale: float = 1.0) -> SparseTensor:
    idx = np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)
    vals = (rng.standard_normal(k) * scale).astype(np.float32)
    return SparseTensor(idx, vals, shape or (n,))


def check_values(quant: str, got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == np.float32
    if quant == "fp32":
        assert np.array_equal(got.view(np.uint32), want.astype(np.float32).view(np.uint32))
    elif quant == "fp16":
        np.testing.assert_allclose(got, want, rtol=2.0**-11, atol=6e-8)
    elif quant == "int8":
        step = np.float32(np.abs(want).max() / 127.0) if want.size else 0.0
        assert np.all(np.abs(got - want) <= step / 2 * (1 + 1e-5) + 1e-30)
    else:  # int4: sign + 3-bit level on [min |v|, max |v|]
        mag = np.abs(want.astype(np.float64))
        step = (mag.max() - mag.min()) / 7 if want.size else 0.0
        assert np.all(np.abs(got - want) <= step / 2 * (1 + 1e-5) + 1e-6 * mag.max(initial=0) + 1e-30)
        assert np.all(np.sign(got) * np.sign(want) >= 0)


def shapes_of(tensors) -> dict:
    return {k: tuple(getattr(v, "shape", np.shape(v))) for k, v in tensors.items()}


# ------------------------------------------------------------------------------------------------
# round trips and sizes
# ------------------------------------------------------------------------------------------------


@FAST
@given(
    n=st.integers(1, 5000),
    frac=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
    coding=st.sampled_from(CODINGS),
    quant=st.sampled_from(QUANTS),
    log_scale=st.floats(-30, 30),
)
def test_roundtrip_every_coding_and_quant(n, frac, seed, coding, quant, log_scale):
    rng = np.random.default_rng(seed)
    k = int(round(frac * n))
    sp = {"a.weight": random_sparse(rng, n, k, scale=10.0**log_scale), "b": random_sparse(rng, 7, 3, (7,))}
    if quant == "fp16":  # fp16 saturates by design; keep values in range for the exactness check
        for t in sp.values():
            np.clip(t.values, -6e4, 6e4, out=t.values)
    cfg = CodecConfig(density=0.5, quant=quant, index_coding=coding)
    blob = encode_sparse(sp, cfg)
    out = decode_sparse(blob, {"a.weight": (n,), "b": (7,)})
    assert list(out) == ["a.weight", "b"]
    for name, t in sp.items():
        assert out[name].indices.dtype == np.int64
        assert np.array_equal(out[name].indices, t.indices)
        assert out[name].shape == t.shape
        if quant == "fp16" and 10.0**log_scale < 1e-3:
            # subnormal fp16: absolute error bounded by half the smallest subnormal step
            assert np.all(np.abs(out[name].values - t.values) <= 2.0**-25 + np.abs(t.values) * 2.0**-11)
        else:
            check_values(quant, out[name].values, t.values)
    stats = blob_stats(blob, shapes_of(sp))
    assert stats["total_bytes"] == len(blob)
    assert stats["fixed_bytes"] == sc.FIXED_BYTES
    assert stats["header_bytes"] + (stats["index_bits"] + stats["value_bits"]) // 8 == len(blob)
    if k == 0:
        assert stats["tensors"][0]["coding"] == "none"
    elif coding != "auto":
        assert stats["tensors"][0]["coding"] == coding


@FAST
@given(n=st.integers(2, 20000), frac=st.floats(0.0005, 0.9), seed=st.integers(0, 2**31 - 1))
def test_auto_is_never_larger_than_any_forced_coding(n, frac, seed):
    rng = np.random.default_rng(seed)
    k = max(1, min(n - 1, int(round(frac * n))))
    sp = {"w": random_sparse(rng, n, k, (n,))}
    sizes = {c: len(encode_sparse(sp, CodecConfig(quant="int8", index_coding=c))) for c in CODINGS}
    assert sizes["auto"] == min(sizes.values())
    chosen = blob_stats(encode_sparse(sp, CodecConfig(index_coding="auto")), shapes_of(sp))["tensors"][0]["coding"]
    assert sizes["auto"] == sizes[chosen]
    # the information bound is a (near) floor for every coding on random supports
    bound = index_bits_bound(n, k)
    for c in ("bitmap", "delta_varint", "rice"):
        bits = blob_stats(encode_sparse(sp, CodecConfig(index_coding=c)), shapes_of(sp))["index_bits"]
        assert bits >= 0.95 * bound - 8, (c, bits, bound)


def test_bitmap_and_varint_match_their_textbook_sizes():
    idx = np.array([0, 5, 200, 9999], dtype=np.int64)
    sp = {"w": SparseTensor(idx, np.ones(4, np.float32), (10000,))}
    bm = blob_stats(encode_sparse(sp, CodecConfig(index_coding="bitmap")), shapes_of(sp))["tensors"][0]
    dv = blob_stats(encode_sparse(sp, CodecConfig(index_coding="delta_varint")), shapes_of(sp))["tensors"][0]
    assert bm["index_bits"] == 8 * 1250
    # deltas 1, 5, 195, 9799 -> 1 + 1 + 2 + 2 bytes of LEB128
    assert dv["index_bits"] == 8 * 6


@pytest.mark.parametrize("seed", range(5))
def test_index_bits_within_10pct_of_bound_at_1pct_density(seed):
    rng = np.random.default_rng(seed)
    n = 100_000
    tensors = {"w": rng.standard_normal(n).astype(np.float32)}
    blob, _, _ = compress(tensors, CodecConfig(density=0.01))
    stats = blob_stats(blob, shapes_of(tensors))
    assert stats["k"] == 1000
    assert stats["tensors"][0]["coding"] == "rice"
    assert 0.97 <= stats["index_bits_over_bound"] <= 1.10


def test_index_efficiency_over_density_and_size_grid():
    rng = np.random.default_rng(1)
    ratios = []
    for n in (10_000, 100_000, 1_000_000):
        for density in (0.001, 0.01, 0.1):
            k = int(round(density * n))
            blob = encode_sparse({"w": random_sparse(rng, n, k)}, CodecConfig(index_coding="rice"))
            ratios.append(blob_stats(blob, {"w": (n,)})["index_bits_over_bound"])
    assert np.mean(ratios) <= 1.10
    assert max(ratios) <= 1.2  # worst case is k=10 (param byte + padding dominate)


def test_index_bits_bound_values():
    assert index_bits_bound(10, 0) == 0.0 and index_bits_bound(10, 10) == 0.0
    assert index_bits_bound(4, 2) == pytest.approx(math.log2(6))
    assert index_bits_bound(100_000, 1000) == pytest.approx(math.log2(math.comb(100_000, 1000)), rel=1e-9)
    with pytest.raises(ValueError):
        index_bits_bound(3, 4)


# ------------------------------------------------------------------------------------------------
# selection, losslessness, error feedback
# ------------------------------------------------------------------------------------------------


def test_per_tensor_k_and_largest_magnitudes():
    rng = np.random.default_rng(0)
    t = {"a": rng.standard_normal((30, 40)).astype(np.float32), "b": rng.standard_normal(7).astype(np.float32)}
    sp = topk_sparsify(t, CodecConfig(density=0.1))
    assert sp["a"].k == 120 and sp["b"].k == 1  # max(1, round(0.7)) = 1
    flat = np.abs(t["a"]).ravel()
    assert np.all(np.diff(sp["a"].indices) > 0)
    assert flat[sp["a"].indices].min() >= np.delete(flat, sp["a"].indices).max()
    assert np.array_equal(sp["a"].values, t["a"].ravel()[sp["a"].indices])


def test_global_scope_exact_k_single_threshold():
    rng = np.random.default_rng(1)
    t = {"big": (rng.standard_normal(5000) * 10).astype(np.float32), "small": rng.standard_normal(3000).astype(np.float32)}
    sp = topk_sparsify(t, CodecConfig(density=0.02, scope="global"))
    assert sp["big"].k + sp["small"].k == 160
    assert sp["big"].k > sp["small"].k  # larger-magnitude tensor wins more of the budget
    kept = np.concatenate([np.abs(sp[n].values) for n in t])
    dropped = np.concatenate([np.abs(np.delete(t[n], sp[n].indices)) for n in t])
    assert kept.min() >= dropped.max()


def test_ties_are_broken_by_position_deterministically():
    t = {"w": np.ones(100, np.float32), "z": np.zeros(10, np.float32)}
    sp = topk_sparsify(t, CodecConfig(density=0.05))
    assert np.array_equal(sp["w"].indices, np.arange(5))
    assert sp["z"].k == 0  # all-zero tensor sends nothing
    g = topk_sparsify({"b": np.ones(10, np.float32), "a": np.ones(10, np.float32)}, CodecConfig(0.3, "global"))
    assert list(g) == ["b", "a"]  # caller's order kept
    assert g["a"].k == 6 and g["b"].k == 0  # sorted-name order decides ties across tensors


@pytest.mark.parametrize("scope", ["per_tensor", "global"])
@pytest.mark.parametrize("coding", CODINGS)
def test_density_one_fp32_is_lossless(scope, coding):
    rng = np.random.default_rng(2)
    t = {"a": rng.standard_normal((17, 9)).astype(np.float32), "b": np.zeros(5, np.float32),
         "c": np.array([0.0, 1e-40, -3.5, 0.0], np.float32)}
    blob, sent, resid = compress(t, CodecConfig(density=1.0, scope=scope, quant="fp32", index_coding=coding))
    for name in t:
        assert sent[name].shape == t[name].shape
        assert np.array_equal(sent[name], t[name])
        assert not resid[name].any()


@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("scope", ["per_tensor", "global"])
def test_error_feedback_conserves_the_update_mass(quant, scope):
    rng = np.random.default_rng(3)
    shapes = {"l0.A": (8, 64), "l0.B": (64, 8), "bias": (64,)}
    cfg = CodecConfig(density=0.05, scope=scope, quant=quant)
    residual = None
    total_true = {n: np.zeros(s, np.float64) for n, s in shapes.items()}
    total_sent = {n: np.zeros(s, np.float64) for n, s in shapes.items()}
    for _ in range(6):
        upd = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
        blob, sent, residual = compress(upd, cfg, residual)
        decoded = densify(decode_sparse(blob, shapes))
        for n in shapes:
            # what the server reconstructs is bit-identical to what the client thinks it sent
            assert np.array_equal(decoded[n].view(np.uint32), sent[n].view(np.uint32))
            total_true[n] += upd[n]
            total_sent[n] += sent[n]
    for n in shapes:
        np.testing.assert_allclose(total_sent[n] + residual[n], total_true[n], atol=1e-4)
        assert np.abs(residual[n]).max() > 0  # 5 % density really did hold something back


def test_error_feedback_eventually_sends_small_coordinates():
    upd = {"w": np.array([10.0, 1.0, 0.0, 0.0], np.float32)}
    cfg = CodecConfig(density=0.25, quant="fp32")
    residual = None
    sent_positions = []
    for _ in range(12):
        _, sent, residual = compress(upd, cfg, residual)
        sent_positions.append(int(np.flatnonzero(sent["w"])[0]))
    assert 1 in sent_positions  # the small coordinate accumulates until it wins


def test_int8_scale_and_fp16_saturation():
    v = np.array([-2.54, 0.01, 1.27], np.float32)
    sp = {"w": SparseTensor(np.arange(3, dtype=np.int64), v, (3,))}
    out = decode_sparse(encode_sparse(sp, CodecConfig(quant="int8")), {"w": (3,)})["w"].values
    scale = np.float32(2.54 / 127)
    assert np.array_equal(out, np.array([-127, 0, 64], np.float32) * scale)
    big = {"w": SparseTensor(np.array([0, 1]), np.array([1e6, -1e6], np.float32), (2,))}
    blob, sent, resid = compress({"w": np.array([1e6, -1e6], np.float32)}, CodecConfig(1.0, quant="fp16"))
    assert np.array_equal(sent["w"], [65504.0, -65504.0])
    assert np.allclose(resid["w"], [1e6 - 65504, -(1e6 - 65504)])
    assert np.isfinite(decode_sparse(encode_sparse(big, CodecConfig(quant="fp16")), {"w": (2,)})["w"].values).all()


def test_accepts_torch_tensors():
    import torch  # a hard dependency (a skip would hide its absence); lazy like the codec keeps it

    t = {"w": torch.arange(10, dtype=torch.float32)}
    blob, sent, _ = compress(t, CodecConfig(density=0.2, quant="fp32"))
    assert np.array_equal(np.flatnonzero(sent["w"]), [8, 9]) and np.array_equal(sent["w"][8:], [8.0, 9.0])


def test_config_validation():
    with pytest.raises(ValueError, match="density"):
        CodecConfig(density=0.0)
    with pytest.raises(ValueError, match="scope"):
        CodecConfig(scope="layer")
    with pytest.raises(ValueError, match="quant"):
        CodecConfig(quant="int3")
    with pytest.raises(ValueError, match="index_coding"):
        CodecConfig(index_coding="zstd")


def test_encoder_rejects_bad_input_with_reasons():
    good = np.arange(3, dtype=np.int64)
    vals = np.ones(3, np.float32)
    cases = {
        "unsorted": SparseTensor(np.array([2, 0, 1]), vals, (5,)),
        "duplicate": SparseTensor(np.array([0, 1, 1]), vals, (5,)),
        "index_range": SparseTensor(np.array([0, 1, 5]), vals, (5,)),
        "nonfinite": SparseTensor(good, np.array([1, np.nan, 0], np.float32), (5,)),
    }
    for reason, bad in cases.items():
        with pytest.raises(UpdateRejected) as ei:
            encode_sparse({"layer.w": bad}, CodecConfig())
        assert ei.value.reason == reason
        assert "layer.w" in str(ei.value)
    with pytest.raises(UpdateRejected) as ei:
        validate_sparse({"x": SparseTensor(good, vals, (5,))}, expected_shapes={"y": (5,)})
    assert ei.value.reason == "unknown_tensor"
    with pytest.raises(UpdateRejected) as ei:
        topk_sparsify({"w": np.array([1.0, np.inf], np.float32)}, CodecConfig())
    assert ei.value.reason == "nonfinite"


# ------------------------------------------------------------------------------------------------
# hostile blobs
# ------------------------------------------------------------------------------------------------


W100 = {"w": (100,)}


def forge(records: list[dict], version: int = sc.VERSION, count: int | None = None, schema=None) -> bytes:
    """A blob with a valid checksum and length but arbitrary record contents."""
    body = bytearray()
    ic.write_varint(body, len(records) if count is None else count)
    for r in records:
        quant = r.get("quant", "fp32")
        params = r.get("params", {"int8": (1.0,), "int4": (0.5, 0.25)}.get(quant, ()))
        sc._append_record(body, r.get("gap", 0), r["k"], r.get("coding", "delta_varint"), quant, params,
                          r.get("idx", b""), r.get("val", b""), r.get("index_len"))
    return sc._assemble(bytes(body), sc.TensorSchema.of(schema or W100).digest, version)


def fp32(*v) -> bytes:
    return np.array(v, "<f4").tobytes()


def varints(*d) -> bytes:
    return ic.encode_varints(np.array(d, np.int64))


def reject(blob, schema=None, **kw) -> UpdateRejected:
    with pytest.raises(UpdateRejected) as ei:
        decode_sparse(blob, schema or W100, **kw)
    exc = ei.value
    assert not exc.internal, f"decoder bug surfaced as internal error: {exc}"
    assert exc.reason in sc.REASONS and str(exc)
    return exc


def test_forged_blob_baseline_is_accepted():
    blob = forge([{"k": 2, "idx": varints(3, 4), "val": fp32(1.0, 2.0)}])
    out = decode_sparse(blob, W100)
    assert np.array_equal(out["w"].indices, [2, 6])
    two = {"a": (3,), "w": (100,)}
    out = decode_sparse(forge([{"gap": 1, "k": 1, "idx": varints(3), "val": fp32(5.0)}], schema=two), two)
    assert list(out) == ["w"] and out["w"].indices.tolist() == [2]  # addressed by position, not name


def test_targeted_rejections_name_reason_and_tensor():
    nan = float("nan")
    cases = [
        # (blob, decode kwargs, expected reason)
        (forge([{"k": 2, "idx": varints(3, 0), "val": fp32(1, 2)}]), {}, "duplicate"),
        (forge([{"k": 2, "idx": varints(3, 98), "val": fp32(1, 2)}]), {}, "index_range"),
        (forge([{"k": 1, "idx": varints(101), "val": fp32(1)}]), {}, "index_range"),
        (forge([{"k": 2, "idx": varints(1, 1), "val": fp32(1, np.nan)}]), {}, "nonfinite"),
        (forge([{"k": 1, "idx": varints(1), "val": fp32(np.inf)}]), {}, "nonfinite"),
        (forge([{"k": 1, "idx": varints(1), "quant": "fp16", "val": np.array([np.nan], "<f2").tobytes()}]), {},
         "nonfinite"),
        (forge([{"k": 1, "idx": varints(1), "quant": "int8", "params": (nan,), "val": b"\x01"}]), {}, "nonfinite"),
        (forge([{"k": 1, "idx": varints(1), "quant": "int8", "params": (float("inf"),), "val": b"\x01"}]), {},
         "nonfinite"),
        (forge([{"k": 1, "idx": varints(1), "quant": "int4", "params": (1.0, nan), "val": b"\x01"}]), {},
         "nonfinite"),
        (forge([{"k": 1, "idx": varints(1), "quant": "int4", "params": (3e38, 3e38), "val": b"\x07"}]), {},
         "nonfinite"),  # lo + 7 step overflows float32
        (forge([{"k": 1, "idx": varints(1), "quant": "int4", "params": (-1.0, 1.0), "val": b"\x01"}]), {},
         "malformed"),
        (forge([{"k": 1, "idx": varints(1), "quant": "int4", "val": b"\x31"}]), {}, "malformed"),  # padding nibble
        (forge([{"k": 1, "idx": varints(1), "val": fp32(1)}]), {"schema": {"w": (10, 10)}}, "schema"),
        (forge([{"k": 1, "idx": varints(1), "val": fp32(1)}]), {"schema": {"v": (100,)}}, "schema"),
        (forge([{"gap": 1, "k": 1, "idx": varints(1), "val": fp32(1)}]), {}, "unknown_tensor"),
        (forge([{"k": 1, "idx": varints(1), "val": fp32(1)}] * 2), {}, "malformed"),  # more records than tensors
        (forge([{"k": 101, "idx": b"", "val": b""}]), {}, "index_range"),  # k > n
        (forge([{"k": 1, "idx": varints(1), "val": fp32(1)[:3]}]), {}, "byte_count"),  # short value payload
        (forge([{"k": 1, "idx": varints(1), "val": fp32(1), "index_len": 5}]), {}, "byte_count"),
        (forge([{"k": 2, "idx": varints(1), "val": fp32(1, 2)}]), {}, "byte_count"),  # fewer deltas than k
        (forge([{"k": 1, "idx": varints(1, 2), "val": fp32(1)}]), {}, "byte_count"),  # more deltas than k
        (forge([{"k": 1, "idx": varints(1), "val": fp32(1)}], count=2, schema={"v": (5,), "w": (100,)}),
         {"schema": {"v": (5,), "w": (100,)}}, "byte_count"),
        (forge([{"k": 1, "idx": varints(1), "val": fp32(1)}], version=1), {}, "version"),
        (forge([{"k": 1, "coding": "bitmap", "idx": b"\x80" + bytes(11), "val": fp32(1)}]), {}, "byte_count"),
        (forge([{"k": 2, "coding": "bitmap", "idx": b"\x80" + bytes(12), "val": fp32(1, 2)}]), {}, "malformed"),
        (forge([{"k": 1, "coding": "bitmap", "idx": bytes(12) + b"\x01", "val": fp32(1)}]), {}, "malformed"),
        (forge([{"k": 1, "coding": "dense", "idx": b"", "val": fp32(1)}]), {}, "malformed"),
        (forge([{"k": 1, "coding": "rice", "idx": bytes([50, 0x80]), "val": fp32(1)}]), {}, "malformed"),
        (forge([{"k": 1, "coding": "rice", "idx": bytes([0]) + bytes(13) + b"\x80", "val": fp32(1)}]), {},
         "index_range"),
        (forge([{"k": 1, "coding": "rice", "idx": bytes([0, 0x80, 0]), "val": fp32(1)}]), {}, "byte_count"),
        (forge([{"k": 1, "coding": "rice", "idx": bytes([0, 0xC0]), "val": fp32(1)}]), {}, "malformed"),
        (forge([{"k": 1, "quant": "int8", "params": (1.0,), "idx": varints(1), "val": b"\x80"}]), {}, "malformed"),
        (forge([{"k": 1, "quant": "int8", "params": (-1.0,), "idx": varints(1), "val": b"\x01"}]), {}, "malformed"),
        (forge([{"k": 1, "idx": bytes([0x81, 0x00]), "val": fp32(1)}]), {}, "malformed"),  # overlong varint
        (forge([{"k": 1, "idx": b"\xff" * 6 + b"\x01", "val": fp32(1)}]), {}, "index_range"),
        (forge([{"k": 0, "coding": "none"}], schema={"w": (2**31,)}), {"schema": {"w": (2**31,)}}, "oversize"),
        (forge([{"k": 1, "idx": varints(1), "val": fp32(1)}]), {"max_bytes": 20}, "oversize"),
    ]
    for blob, kw, reason in cases:
        exc = reject(blob, **kw)
        assert exc.reason == reason, (reason, exc.reason, str(exc))
        if reason not in ("version", "oversize", "byte_count") and exc.tensor is not None:
            assert repr(exc.tensor) in str(exc) or exc.tensor in str(exc)


def test_schema_mismatch_is_refused_with_a_clear_error():
    rng = np.random.default_rng(0)
    shapes = {"l0.lora_A": (4, 30), "l0.lora_B": (30, 4)}
    blob, _, _ = compress({n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()},
                          CodecConfig(density=0.2), schema=shapes)
    assert set(decode_sparse(blob, shapes)) == set(shapes)
    for other in ({"l0.lora_A": (8, 30), "l0.lora_B": (30, 8)},  # another rank
                  {"l0.lora_B": (30, 4)},  # another aggregation mode (B only)
                  {"l1.lora_A": (4, 30), "l1.lora_B": (30, 4)}):  # another layer naming
        with pytest.raises(UpdateRejected, match="schema") as ei:
            decode_sparse(blob, other)
        assert ei.value.reason == "schema" and "different model / LoRA / aggregation" in str(ei.value)


def test_no_names_on_the_wire_and_fixed_overhead():
    rng = np.random.default_rng(1)
    shapes = {f"model.layers.{i}.self_attn.{m}_proj.lora_{ab}.weight": ((8, 576) if ab == "A" else (576, 8))
              for i in range(30) for m in ("q", "v") for ab in "AB"}
    t = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    blob, _, _ = compress(t, CodecConfig(density=0.01, quant="int8"), schema=shapes)
    assert b"lora" not in blob and b"layers" not in blob
    stats = blob_stats(blob, shapes)
    assert stats["fixed_bytes"] == sc.FIXED_BYTES  # 120 records: the count fits one varint byte
    assert stats["record_header_bytes"] <= 10 * len(shapes)  # gap, k, mode, scale, index length
    payload = (stats["index_bits"] + stats["value_bits"]) // 8
    assert stats["fixed_bytes"] + stats["record_header_bytes"] + payload == len(blob)
    assert stats["record_header_bytes"] + stats["fixed_bytes"] < 0.2 * len(blob)


def test_int4_round_trip_error_is_within_its_bound():
    rng = np.random.default_rng(2)
    for scale in (1e-6, 1e-2, 1.0, 1e3):
        v = (rng.standard_normal(1001) * scale).astype(np.float32)
        sp = {"w": SparseTensor(np.arange(1001, dtype=np.int64), v, (1001,))}
        blob = encode_sparse(sp, CodecConfig(quant="int4"))
        out = decode_sparse(blob, {"w": (1001,)})["w"].values
        check_values("int4", out, v)
        assert len(blob) <= sc.FIXED_BYTES + 16 + 501  # 4 bits per value + a small header


@pytest.mark.parametrize("quant", ["int4", "int8"])
def test_error_feedback_absorbs_quantisation_error_over_rounds(quant):
    """Sending the same update for 40 rounds: with feedback the total sent stays within one
    quantisation step of the truth; without it the rounding error piles up every round."""
    rng = np.random.default_rng(3)
    upd = {"w": rng.standard_normal(64).astype(np.float32)}
    cfg = CodecConfig(density=1.0, quant=quant)
    rounds = 40
    with_fb = np.zeros(64, np.float64)
    without = np.zeros(64, np.float64)
    residual = None
    for _ in range(rounds):
        _, sent, residual = compress(upd, cfg, residual)
        with_fb += sent["w"]
        _, sent_plain, _ = compress(upd, cfg, None)
        without += sent_plain["w"]
    truth = rounds * upd["w"].astype(np.float64)
    step = 2 * np.abs(upd["w"]).max() / (7 if quant == "int4" else 127)
    err_fb, err_plain = np.abs(with_fb - truth).max(), np.abs(without - truth).max()
    assert err_fb <= 2 * step
    assert err_plain > 5 * err_fb


def test_name_and_coding_id_corruptions():
    good = forge([{"k": 1, "idx": varints(1), "val": fp32(1)}])
    digest = sc.TensorSchema.of(W100).digest
    # body layout: count, gap, k, mode (coding << 4 | quant), [params], [index_len], payloads
    for mode, what in ((0x90, "index coding"), (0x39, "quantisation")):
        body = bytearray(good[sc.HEADER_BYTES:-4])
        body[3] = mode
        exc = reject(sc._assemble(bytes(body), digest))
        assert exc.reason == "malformed" and what in str(exc)
    assert reject(good + b"\x00").reason == "byte_count"  # trailing garbage
    assert reject(good[:-1]).reason == "byte_count"  # truncated
    assert reject(b"nope" + good[4:]).reason == "malformed"
    assert reject(b"").reason == "malformed"
    assert reject("not bytes").reason == "malformed"  # type: ignore[arg-type]


def _sample_blobs() -> list[bytes]:
    rng = np.random.default_rng(7)
    shapes = {"l0.A": (4, 300), "l0.B": (300, 4), "norm": (50,)}
    t = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    blobs = []
    for coding in CODINGS:
        for quant in QUANTS:
            blobs.append(compress(t, CodecConfig(density=0.05, quant=quant, index_coding=coding))[0])
    blobs.append(compress(t, CodecConfig(density=1.0, quant="fp32"))[0])
    blobs.append(compress(t, CodecConfig(density=0.6, quant="fp16"))[0])  # bitmap wins here
    return blobs


def test_fuzz_over_1000_malformed_blobs_all_rejected():
    rng = np.random.default_rng(11)
    blobs = _sample_blobs()
    expected = {"l0.A": (4, 300), "l0.B": (300, 4), "norm": (50,)}
    for b in blobs:  # sanity: the originals are valid
        decode_sparse(b, expected)
    hostile: list[tuple[str, bytes]] = []
    for _ in range(250):
        hostile.append(("random", rng.bytes(int(rng.integers(0, 400)))))
    for _ in range(100):  # random bytes behind a valid magic/version
        hostile.append(("random_body", sc.MAGIC + bytes([sc.VERSION]) + rng.bytes(int(rng.integers(0, 300)))))
    for _ in range(300):
        b = blobs[int(rng.integers(len(blobs)))]
        hostile.append(("truncation", b[: int(rng.integers(0, len(b)))]))
    for _ in range(400):
        b = bytearray(blobs[int(rng.integers(len(blobs)))])
        for _ in range(int(rng.integers(1, 4))):
            pos = int(rng.integers(len(b)))
            b[pos] ^= 1 << int(rng.integers(8))
        hostile.append(("bitflip", bytes(b)))
    for _ in range(50):
        b = blobs[int(rng.integers(len(blobs)))]
        hostile.append(("trailing", b + rng.bytes(int(rng.integers(1, 20)))))
    assert len(hostile) >= 1000
    reasons: dict[str, set[str]] = {}
    for kind, blob in hostile:
        exc = reject(blob, expected)
        reasons.setdefault(kind, set()).add(exc.reason)
    assert reasons["truncation"] <= {"byte_count", "malformed"}
    assert reasons["trailing"] == {"byte_count"}
    assert reasons["bitflip"] <= {"checksum", "byte_count", "version", "malformed"}
    assert "checksum" in reasons["bitflip"]


def test_fuzz_checksum_valid_mutations_never_crash():
    """Mutate the body and re-seal (valid length + CRC) so the structural validators are what's tested."""
    rng = np.random.default_rng(12)
    blobs = _sample_blobs()
    expected = {"l0.A": (4, 300), "l0.B": (300, 4), "norm": (50,)}
    accepted = rejected = 0
    for i in range(600):
        body = bytearray(blobs[i % len(blobs)][sc.HEADER_BYTES:-4])
        mode = i % 3
        if mode == 0:
            for _ in range(int(rng.integers(1, 4))):
                body[int(rng.integers(len(body)))] = int(rng.integers(256))
        elif mode == 1:
            cut = int(rng.integers(len(body)))
            body = body[:cut] + rng.bytes(int(rng.integers(0, 8))) + body[cut + int(rng.integers(0, 8)) :]
        else:
            body = bytearray(rng.bytes(len(body)))
        blob = sc._assemble(bytes(body), sc.TensorSchema.of(expected).digest)
        try:
            out = decode_sparse(blob, expected)
        except UpdateRejected as exc:
            assert not exc.internal, str(exc)
            rejected += 1
            continue
        accepted += 1
        for name, t in out.items():  # anything accepted satisfies every invariant
            assert t.shape == expected[name]
            assert t.indices.dtype == np.int64 and t.values.dtype == np.float32
            assert np.all(np.diff(t.indices) > 0)
            assert t.indices.size == 0 or (t.indices[0] >= 0 and t.indices[-1] < np.prod(t.shape))
            assert np.isfinite(t.values).all()
    assert rejected > 400


def test_lying_total_length_and_checksum():
    good = forge([{"k": 1, "idx": varints(1), "val": fp32(1)}])
    lying = bytearray(good)
    lying[5:9] = struct.pack("<I", len(good) + 3)
    assert reject(bytes(lying)).reason == "byte_count"
    resealed = bytes(lying[:-4]) + struct.pack("<I", zlib.crc32(bytes(lying[:-4])))
    assert reject(resealed).reason == "byte_count"
    flipped = bytearray(good)
    flipped[-6] ^= 0x10  # inside the fp32 value: only the checksum can notice
    assert reject(bytes(flipped)).reason == "checksum"


def test_rice_parameter_is_exactly_optimal():
    rng = np.random.default_rng(5)
    for n, k in ((1000, 1), (1000, 999), (50_000, 300), (50_000, 20_000), (2**20, 7)):
        gaps = np.diff(np.sort(rng.choice(n, k, replace=False)), prepend=-1) - 1
        brute = min(range(ic.MAX_RICE_PARAM + 1), key=lambda b: (ic.rice_cost_bits(gaps, b), b))
        assert ic.best_rice_param(gaps, n) == brute


def test_auto_uses_bitmap_when_dense_and_implied_support_when_full():
    rng = np.random.default_rng(6)
    t = {"w": rng.standard_normal(4000).astype(np.float32)}
    half = blob_stats(compress(t, CodecConfig(density=0.6))[0], shapes_of(t))["tensors"][0]
    assert half["coding"] == "bitmap" and half["index_bits"] == 4000
    full = blob_stats(compress(t, CodecConfig(density=1.0))[0], shapes_of(t))["tensors"][0]
    assert full["coding"] == "dense" and full["index_bits"] == 0 and full["k"] == 4000


def test_scalar_and_empty_tensors_round_trip():
    t = {"scalar": np.float32(3.0), "empty": np.zeros((0, 4), np.float32), "v": np.arange(4, dtype=np.float32)}
    blob, sent, resid = compress(t, CodecConfig(density=1.0, quant="fp32"))
    out = decode_sparse(blob, {"scalar": (), "empty": (0, 4), "v": (4,)})
    assert out["scalar"].shape == () and sent["scalar"] == np.float32(3.0)
    assert out["empty"].k == 0 and sent["empty"].shape == (0, 4)
    assert np.array_equal(sent["v"], t["v"])
