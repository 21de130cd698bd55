"""sign1 values: one bit per sent value and one per-tensor scale, made usable by error feedback."""

from __future__ import annotations

import numpy as np
import pytest

from fedcogen.protocols.codecs import sparse_codec as sc
from fedcogen.protocols.codecs.sparse_format import UpdateRejected
from fedcogen.protocols.codecs.value_quant import dequantise, quantise, value_bytes
from fedcogen.run_config import FLSettings


def _send(update: dict[str, np.ndarray], cfg: sc.CodecConfig, residual: dict[str, np.ndarray] | None):
    """One round of error-feedback compression through the real encoder and decoder."""
    schema = sc.TensorSchema.from_shapes({k: v.shape for k, v in update.items()})
    corrected = {k: v + (residual[k] if residual else 0.0) for k, v in update.items()}
    blob = sc.encode_sparse(sc.topk_sparsify(corrected, cfg), cfg, schema)
    sent = sc.densify(sc.decode_sparse(blob, schema))
    return blob, sent, {k: corrected[k] - sent[k] for k in corrected}


def test_sign1_decodes_to_plus_minus_the_mean_magnitude_in_one_bit_per_value() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((37, 41)).astype(np.float32)
    cfg = sc.CodecConfig(density=0.1, quant="sign1")
    sparse = sc.topk_sparsify({"w": w}, cfg)
    blob, sent, _ = _send({"w": w}, cfg, None)
    k = sparse["w"].values.size
    on = sent["w"] != 0
    assert on.sum() == k
    assert np.allclose(np.abs(sent["w"][on]), np.abs(sparse["w"].values).mean(), rtol=1e-6)
    assert (np.sign(sent["w"][on]) == np.sign(w[on])).all()
    stats = sc.blob_stats(blob, sc.TensorSchema.from_shapes({"w": w.shape}))
    assert stats["tensors"][0]["value_bits"] == 8 * value_bytes("sign1", k) == 8 * ((k + 7) // 8)
    assert FLSettings(quant="sign1", down_quant="sign1").quant == "sign1"


def test_sign1_refuses_non_zero_padding_bits() -> None:
    params, payload = quantise(np.array([1.0, -2.0, 3.0], np.float32), "sign1")
    assert payload == bytes([0b010]) and params == pytest.approx((2.0,))
    np.testing.assert_array_equal(dequantise(payload, "sign1", params, 3, "w"), [2.0, -2.0, 2.0])
    with pytest.raises(UpdateRejected, match="sign1 padding bits"):
        dequantise(bytes([0b1000_0010]), "sign1", params, 3, "w")


def test_error_feedback_makes_top_k_sign1_track_the_sum_it_could_not_send() -> None:
    """The same update, top-10 % in signs, for 240 rounds: with feedback the gap between what was sent and
    the truth stops growing (a bounded residual, here ~2x the largest entry); without it every unsent
    entry's gap grows by its own value each round."""
    rng = np.random.default_rng(3)
    upd = {"w": (rng.standard_normal(64) * np.linspace(0.1, 3, 64)).astype(np.float32)}
    cfg = sc.CodecConfig(density=0.1, quant="sign1")
    with_fb, without = np.zeros(64), np.zeros(64)
    residual = None
    gaps = {}
    for r in range(1, 241):
        _, sent, residual = _send(upd, cfg, residual)
        with_fb += sent["w"]
        without += _send(upd, cfg, None)[1]["w"]
        if r in (60, 240):
            gaps[r] = np.abs(with_fb - r * upd["w"].astype(np.float64)).max()
    err_plain = np.abs(without - 240 * upd["w"].astype(np.float64)).max()
    assert gaps[240] <= 1.5 * gaps[60] and gaps[240] <= 3 * np.abs(upd["w"]).max()
    assert err_plain > 10 * gaps[240]
