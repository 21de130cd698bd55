"""Unit tests of the server's validation + sparse aggregation path (no Flower, no model)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from fedcogen.protocols.codecs import index_coding as ic
from fedcogen.protocols.codecs import sparse_codec as codec
from fedcogen.server.fl.aggregation import (
    RoundAggregator,
    ServerOptConfig,
    ServerOptimizer,
    SparseAccumulator,
    ValidationLimits,
    dense_weighted_mean,
    validate_update,
)
from fedcogen.server.fl.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

SHAPES = {"a.lora_A.weight": (4, 16), "a.lora_B.weight": (16, 4), "b.lora_A.weight": (4, 8)}


def _rand_update(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


def _blob(update: dict[str, np.ndarray], density: float = 1.0, quant: str = "fp32") -> bytes:
    cfg = codec.CodecConfig(density=density, quant=quant)
    return codec.encode_sparse(codec.topk_sparsify(update, cfg), cfg, SHAPES)


def test_density_one_fp32_sparse_path_equals_dense_fedavg() -> None:
    rng = np.random.default_rng(0)
    updates = [(_rand_update(rng), float(w)) for w in (3, 7, 11, 1)]
    agg = RoundAggregator(SHAPES)
    for i, (u, w) in enumerate(updates):
        assert agg.offer(f"c{i}", _blob(u), w) is None
    res = agg.result()
    dense = dense_weighted_mean(updates)
    assert res.accepted == ["c0", "c1", "c2", "c3"] and not res.rejected
    for k in SHAPES:
        np.testing.assert_allclose(res.mean[k], dense[k], rtol=1e-6, atol=1e-6)


def test_sparse_mean_counts_absent_entries_as_zero() -> None:
    rng = np.random.default_rng(1)
    u1, u2 = _rand_update(rng), _rand_update(rng)
    agg = RoundAggregator(SHAPES)
    b1, b2 = _blob(u1, 0.25), _blob(u2, 0.25)
    agg.offer("x", b1, 1.0)
    agg.offer("y", b2, 3.0)
    d1 = codec.densify(codec.decode_sparse(b1, SHAPES))
    d2 = codec.densify(codec.decode_sparse(b2, SHAPES))
    for k in SHAPES:
        np.testing.assert_allclose(agg.result().mean[k], (d1[k] + 3 * d2[k]) / 4, rtol=1e-6, atol=1e-7)
        assert np.count_nonzero(d1[k]) <= int(round(0.25 * d1[k].size))


def _forge(records: list[tuple], quant: str = "fp32", shapes: dict | None = None) -> bytes:
    """A blob with a valid checksum whose content is whatever the records say (tensors by schema position)."""
    body = bytearray()
    ic.write_varint(body, len(records))
    for pos, idx, vals in records:
        idx = np.asarray(idx, np.int64)
        d = np.diff(np.concatenate([[-1], idx]))
        payload = ic.encode_varints(np.maximum(d, 0).astype(np.int64))
        codec._append_record(body, pos, len(idx), "delta_varint", quant, (), payload,
                             np.asarray(vals, np.float32).tobytes())
    return codec._assemble(bytes(body), codec.TensorSchema.of(shapes or SHAPES).digest)


def _fix_crc(blob: bytearray) -> bytes:
    struct.pack_into("<I", blob, 5, len(blob))
    struct.pack_into("<I", blob, len(blob) - 4, zlib.crc32(bytes(blob[:-4])) & 0xFFFFFFFF)
    return bytes(blob)


def _malformed_updates(rng: np.random.Generator, n: int) -> list[tuple[object, object, str]]:
    """(payload, weight, category) triples that must all be rejected."""
    good = _blob(_rand_update(rng), 0.3)
    out: list[tuple[object, object, str]] = []
    name = 0  # schema position of a.lora_A.weight
    kinds = ["flip", "flip_crc", "truncate", "extend", "garbage", "nan", "inf", "huge", "dup", "unsorted",
             "range", "unknown", "shape", "oversize", "weight", "type", "empty", "lying_len"]
    for i in range(n):
        kind = kinds[i % len(kinds)]
        if kind == "flip":
            b = bytearray(good)
            for _ in range(int(rng.integers(1, 4))):
                b[int(rng.integers(0, len(b)))] ^= int(rng.integers(1, 256))
            out.append((bytes(b), 1.0, kind))
        elif kind == "flip_crc":  # corrupted body with a *valid* checksum: exercises the parser itself
            b = bytearray(good)
            pos = int(rng.integers(10, len(b) - 4))
            b[pos] ^= int(rng.integers(1, 256))
            out.append((_fix_crc(b), 1.0, kind))
        elif kind == "truncate":
            out.append((good[: int(rng.integers(0, len(good) - 1))], 1.0, kind))
        elif kind == "extend":
            out.append((good + rng.bytes(int(rng.integers(1, 64))), 1.0, kind))
        elif kind == "garbage":
            out.append((rng.bytes(int(rng.integers(0, 400))), 1.0, kind))
        elif kind in ("nan", "inf"):
            vals = rng.normal(size=5).astype(np.float32)
            vals[int(rng.integers(0, 5))] = np.nan if kind == "nan" else -np.inf
            out.append((_forge([(name, [1, 4, 9, 20, 30], vals)]), 1.0, kind))
        elif kind == "huge":
            vals = np.full(5, 1e6 * (1 + rng.random()), np.float32)
            out.append((_forge([(name, [1, 4, 9, 20, 30], vals)]), 1.0, kind))
        elif kind == "dup":
            out.append((_forge([(name, [1, 4, 4, 20], np.ones(4))]), 1.0, kind))
        elif kind == "unsorted":
            b = _forge([(name, [5, 9, 12], np.ones(3))])
            # rewrite the gaps to go backwards: delta 0 then a huge jump
            out.append((_forge([(name, [5, 5, 3], np.ones(3))]) if rng.random() < 0.5 else b[:-6] + b[-5:],
                        1.0, kind))
        elif kind == "range":
            out.append((_forge([(name, [3, 64 + int(rng.integers(0, 100))], np.ones(2))]), 1.0, kind))
        elif kind == "unknown":  # a schema position past the adapter's last tensor
            out.append((_forge([(len(SHAPES) + int(rng.integers(0, 50)), [1], np.ones(1))]), 1.0, kind))
        elif kind == "shape":  # encoded for another adapter: the schema digest differs
            other = {**SHAPES, "a.lora_A.weight": (16, 4 + int(rng.integers(1, 5)))}
            out.append((_forge([(name, [1], np.ones(1))], shapes=other), 1.0, kind))
        elif kind == "oversize":
            out.append((good + bytes(70_000), 1.0, kind))
        elif kind == "weight":
            out.append((good, [0.0, -3.0, float("nan"), float("inf"), "many", None][i % 6], kind))
        elif kind == "type":
            out.append(([1, 2, 3] if i % 2 else "not bytes", 1.0, kind))
        elif kind == "empty":
            out.append((b"", 1.0, kind))
        elif kind == "lying_len":
            body = bytearray()
            ic.write_varint(body, 1)
            codec._append_record(body, name, 2, "delta_varint", "fp32", (), b"\x02\x03",
                                 np.ones(2, np.float32).tobytes(), index_len=int(rng.integers(9, 1 << 20)))
            out.append((codec._assemble(bytes(body), codec.TensorSchema.of(SHAPES).digest), 1.0, kind))
    return out


def test_fuzz_thousand_malformed_updates_none_aggregated_all_counted() -> None:
    rng = np.random.default_rng(1234)
    agg = RoundAggregator(SHAPES, ValidationLimits(max_bytes=64_000, max_norm=1e3, max_abs=1e3))
    bad = _malformed_updates(rng, 1200)
    accepted_by_mistake = []
    for i, (payload, weight, kind) in enumerate(bad):
        if agg.offer(f"evil{i}", payload, weight) is None:
            accepted_by_mistake.append(kind)
    # A bit flip can, very rarely, land on a value byte and still be a perfectly valid update (with a
    # valid CRC only in flip_crc); those are not malformed. Nothing else may get through.
    assert set(accepted_by_mistake) <= {"flip_crc"}, accepted_by_mistake
    res = agg.result()
    assert sum(res.rejected.values()) + len(accepted_by_mistake) == len(bad)
    assert len(res.rejected) >= 8  # many distinct reasons, each counted
    for reason in ("nonfinite", "duplicate", "index_range", "unknown_tensor", "schema", "oversize", "bad_weight"):
        assert res.rejected[reason] > 0, (reason, dict(res.rejected))
    if not accepted_by_mistake:
        assert res.mean is None and agg.acc.count == 0 and agg.acc.total_weight == 0.0
        assert all(not s.any() for s in agg.acc.sums.values())  # server state untouched
    # the aggregator still works normally afterwards
    fresh = RoundAggregator(SHAPES)
    u = _rand_update(rng)
    assert fresh.offer("good", _blob(u), 2.0) is None
    for k in SHAPES:
        np.testing.assert_allclose(fresh.result().mean[k], u[k], rtol=1e-6)


def test_validate_rejects_norm_and_accepts_absent_tensors() -> None:
    rng = np.random.default_rng(2)
    u = _rand_update(rng)
    partial = {"a.lora_A.weight": u["a.lora_A.weight"]}
    sparse = validate_update(_blob(partial), SHAPES)
    assert set(sparse) == {"a.lora_A.weight"}
    big = {k: v * 1e3 for k, v in u.items()}
    with pytest.raises(ValueError) as exc:
        validate_update(_blob(big), SHAPES, ValidationLimits(max_norm=100.0, max_abs=1e9))
    assert exc.value.reason == "norm_too_large"


def test_accumulator_rejects_bad_weight_without_touching_state() -> None:
    acc = SparseAccumulator(SHAPES)
    with pytest.raises(ValueError):
        acc.add({}, float("nan"))
    assert acc.count == 0 and acc.total_weight == 0


@pytest.mark.parametrize("name", ["fedadam", "fedyogi"])
def test_adaptive_server_optimisers_follow_reddi_et_al(name: str) -> None:
    cfg = ServerOptConfig(name, lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    opt = ServerOptimizer(cfg)
    g = {"w": np.zeros(3, np.float32)}
    d = {"w": np.array([1.0, -2.0, 0.0], np.float32)}
    g1 = opt.step(g, d)
    m = 0.1 * d["w"]
    v0 = np.full(3, 1e-6, np.float32)
    v = 0.99 * v0 + 0.01 * d["w"] ** 2 if name == "fedadam" else v0 - 0.01 * d["w"] ** 2 * np.sign(v0 - d["w"] ** 2)
    np.testing.assert_allclose(g1["w"], 0.1 * m / (np.sqrt(v) + 1e-3), rtol=1e-5)
    assert np.sign(g1["w"][0]) == 1 and np.sign(g1["w"][1]) == -1 and g1["w"][2] == 0
    # state round-trips (it is checkpointed)
    other = ServerOptimizer(cfg)
    other.load_state_arrays(opt.state_arrays(), opt.steps)
    np.testing.assert_array_equal(other.step(g1, d)["w"], opt.step(g1, d)["w"])


def test_fedavg_server_lr() -> None:
    opt = ServerOptimizer(ServerOptConfig("fedavg", lr=0.5))
    out = opt.step({"w": np.ones(2, np.float32)}, {"w": np.array([2.0, -2.0], np.float32)})
    np.testing.assert_array_equal(out["w"], [2.0, 0.0])
    with pytest.raises(ValueError, match="server optimiser"):
        ServerOptConfig("sgdm")


def test_checkpoint_atomic_roundtrip(tmp_path) -> None:
    arrays = {"global/x": np.arange(5, dtype=np.float32), "last_delta": np.frombuffer(b"abc", np.uint8)}
    save_checkpoint(tmp_path, arrays, {"round": 3, "client_versions": {"u": 2}})
    got, meta = load_checkpoint(tmp_path)
    np.testing.assert_array_equal(got["global/x"], arrays["global/x"])
    assert meta["round"] == 3 and meta["client_versions"] == {"u": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"]  # no temp files left behind
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing")


def test_offer_counts_validation_errors_but_reraises_server_bugs(monkeypatch, caplog) -> None:
    from fedcogen.server.fl import aggregation

    rng = np.random.default_rng(5)
    agg = RoundAggregator(SHAPES)
    assert agg.offer("bad", b"garbage", 1.0) == "malformed"  # a client's fault: counted
    assert agg.offer("huge-weight", _blob(_rand_update(rng)), 10**400) == "bad_weight"

    def broken(*_a, **_k):
        raise KeyError("server-side bug")

    monkeypatch.setattr(aggregation, "validate_update", broken)
    with caplog.at_level("ERROR", logger=aggregation.__name__), pytest.raises(KeyError, match="server-side bug"):
        agg.offer("innocent", _blob(_rand_update(rng)), 1.0)
    assert any("server error" in r.message and r.exc_info for r in caplog.records)

    def decoder_bug(*_a, **_k):  # the codec converts its own crashes into internal rejections
        raise codec.UpdateRejected("malformed", "update could not be decoded (IndexError)", internal=True)

    monkeypatch.setattr(aggregation, "validate_update", decoder_bug)
    with pytest.raises(codec.UpdateRejected):
        agg.offer("innocent2", _blob(_rand_update(rng)), 1.0)
    res = agg.result()
    assert dict(res.rejected) == {"malformed": 1, "bad_weight": 1}  # server bugs were not blamed on clients
    assert res.accepted == []
