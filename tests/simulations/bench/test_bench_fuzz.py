"""Reduced fuzz benchmark: 1,000 hostile inputs against the decoders and the server's offer path."""

from __future__ import annotations

import numpy as np

from fedcogen.protocols.codecs import sparse_codec as codec
from fedcogen.simulations.bench.bench_fuzz import SHAPES, SPARSE_KINDS, FuzzConfig, malformed_sparse, run_fuzz


def test_thousand_malformed_blobs_no_crash_none_aggregated_bounded_memory() -> None:
    result = run_fuzz(FuzzConfig(blobs=1000, seed=7))
    assert result["blobs"] == 1000
    assert result["crashes"] == 0, [t["crash_examples"] for t in result["targets"].values()]
    assert result["aggregated_bad_updates"] == 0
    assert result["valid_updates_mixed_in"] > 0 and result["lost_valid_updates"] == 0
    # the largest honest object is the dense fp32 adapter of SHAPES (0.06 MB; logit packets are smaller);
    # 1 MB leaves room for a few working copies (measured 0.2 MB), while one allocation sized by a
    # forged header's claim (millions of entries) lands far above it. The benchmark's own bound is 100 MB.
    dense_mb = sum(int(np.prod(s)) for s in SHAPES.values()) * 4 / 2**20
    assert dense_mb < 0.1 and result["peak_extra_memory_mb"] < 1.0
    targets = result["targets"]
    # only mutations that can stay valid may be accepted (a flipped value byte with a fixed CRC, a
    # truncated packet that still parses); everything else must be rejected
    assert set(targets["sparse_decoder"]["accepted_kinds"]) <= {"flip_crc"}
    assert set(targets["logit_decoder"]["accepted_kinds"]) <= {"flip", "truncate"}
    assert targets["server_offer"]["accepted"] == 0
    assert targets["server_offer"]["rejected"] == targets["server_offer"]["fed"]
    assert result["rejected"] >= 950
    assert len(targets["sparse_decoder"]["reasons"]) >= 8  # many distinct reasons, each counted
    assert result["ok"] is True


def test_rice_payload_longer_than_the_shape_allows_is_rejected_before_unpacking() -> None:
    rng = np.random.default_rng(0)
    blob = malformed_sparse(rng, "rice_long", 256 * 1024)
    assert "rice_long" in SPARSE_KINDS
    try:
        codec.decode_sparse(blob, SHAPES)
    except codec.UpdateRejected as exc:
        assert exc.reason == "index_range" and "longer than" in str(exc)
    else:
        raise AssertionError("a rice payload far beyond what 4 gaps need was accepted")
