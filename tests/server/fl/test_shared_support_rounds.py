"""The server's side of shared random supports: the round's sum is exact on the shared support, stale or
indexed updates are refused, the broadcast uses the same support without indices, and a client that missed
rounds catches up exactly through a chain of such deltas."""

from __future__ import annotations

import numpy as np

from fedcogen.lora_adapter import adapter_digest
from fedcogen.protocols import fl_messages as fm
from fedcogen.protocols.codecs import sparse_codec as codec
from fedcogen.protocols.codecs.shared_support import SupportRule, round_support_seed, support_size
from fedcogen.server.fl.aggregation import RoundAggregator, dense_weighted_mean
from fedcogen.server.fl.fl_state import ServerState, advance_broadcast, patch_for

SHAPES = {"a.lora_B": (48, 8), "b.lora_B": (32, 8)}
DENSITY = 0.1


def _updates(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()} for _ in range(n)]


def test_the_rounds_sum_is_exact_on_the_shared_support_and_stale_updates_are_refused() -> None:
    seed = round_support_seed(11, 5)
    cfg = codec.CodecConfig(density=DENSITY, quant="fp32", shared_seed=seed)
    updates = _updates(3)
    agg = RoundAggregator(SHAPES, support=SupportRule(seed, DENSITY))
    for i, u in enumerate(updates):
        assert agg.offer(f"c{i}", codec.compress(u, cfg, None, SHAPES)[0], 1.0 + i) is None
    stale_cfg = codec.CodecConfig(density=DENSITY, quant="fp32", shared_seed=round_support_seed(11, 4))
    assert agg.offer("stale", codec.compress(updates[0], stale_cfg, None, SHAPES)[0], 1.0) == "support"
    topk = codec.CodecConfig(density=DENSITY, quant="fp32")
    assert agg.offer("indexed", codec.compress(updates[0], topk, None, SHAPES)[0], 1.0) == "support"
    res = agg.result()
    assert res.accepted == ["c0", "c1", "c2"] and res.rejected == {"support": 2}
    exact = dense_weighted_mean([(u, 1.0 + i) for i, u in enumerate(updates)])
    for name, shape in SHAPES.items():
        n = int(np.prod(shape))
        on = np.zeros(n, bool)
        on[codec.decode_sparse(codec.compress(updates[0], cfg, None, SHAPES)[0], SHAPES)[name].indices] = True
        assert on.sum() == support_size(n, DENSITY)
        mean = res.mean[name].reshape(-1)
        np.testing.assert_allclose(mean[on], exact[name].reshape(-1)[on], rtol=1e-6, atol=1e-7)
        assert not mean[~on].any()  # nothing off the support: every client sent the same positions


def _run(rounds: int, quant: str = "int4") -> ServerState:
    """Rounds of FedAvg on shared supports: G moves on the round's support, B follows with its delta."""
    init = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    st = ServerState.fresh(init)
    for r, u in enumerate(_updates(rounds, seed=1), start=1):
        seed = round_support_seed(3, r)
        up = codec.CodecConfig(density=DENSITY, quant=quant, shared_seed=seed)
        agg = RoundAggregator(SHAPES, support=SupportRule(seed, DENSITY))
        assert agg.offer("c", codec.compress(u, up, None, SHAPES)[0], 1.0) is None
        st.global_adapter = {k: st.global_adapter[k] + agg.result().mean[k] for k in SHAPES}
        advance_broadcast(st, r, up, SHAPES)
    return st


def test_broadcast_uses_the_rounds_support_without_indices_and_chains_catch_up_exactly() -> None:
    st = _run(5)
    init = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    # each broadcast delta: a shared-support blob of its round, header + values only
    for r, blob in st.deltas.items():
        stats = codec.blob_stats(blob, SHAPES)
        assert {t["coding"] for t in stats["tensors"]} == {"shared"} and stats["index_bits"] == 0
        codec.decode_sparse(blob, SHAPES, expect=SupportRule(round_support_seed(3, r), DENSITY))
    # the same support both ways: the broadcast changed only entries some round's support covered
    assert all(int((lc > 0).sum()) <= 5 * support_size(lc.size, DENSITY) for lc in st.last_changed.values())
    # a client that missed rounds 3-5, and one that never took part, rebuild the broadcast bit for bit
    st.client_versions = {"behind": 2, "new": -1}
    held = fm.apply_patch(fm.apply_patch(init, fm.PATCH_DELTA, st.deltas[1], SHAPES), fm.PATCH_DELTA,
                          st.deltas[2], SHAPES)
    patch = patch_for(st, "behind")
    assert patch.kind == fm.PATCH_CHAIN and patch.base_version == 2
    assert adapter_digest(fm.apply_patch(held, patch.kind, patch.blob, SHAPES)) == adapter_digest(st.broadcast)
    new = patch_for(st, "new")
    assert adapter_digest(fm.apply_patch(init, new.kind, new.blob, SHAPES)) == new.digest
    # and the lossless overwrite patch (chosen when a chain is larger) rebuilds the same adapter
    idx = {k: np.flatnonzero(lc > 2) for k, lc in st.last_changed.items()}
    over = fm.apply_patch(held, fm.PATCH_OVERWRITE, fm.overwrite_patch(st.broadcast, idx), SHAPES)
    assert adapter_digest(over) == adapter_digest(st.broadcast)
