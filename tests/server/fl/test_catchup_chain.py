"""Catch-up chains: the missed broadcast deltas, in order, rebuild the server's adapter bit for bit, the
server sends them when they are smaller than the lossless overwrite, and a hostile chain is refused."""

from __future__ import annotations

import numpy as np
import pytest

from fedcogen.lora_adapter import adapter_digest
from fedcogen.protocols import fl_messages as fm
from fedcogen.protocols.codecs import sparse_codec as codec
from fedcogen.protocols.codecs.patch_chain import pack_chain, unpack_chain
from fedcogen.server.fl.fl_state import ServerState, advance_broadcast, patch_for

SHAPES = {"x.lora_B.core": (16, 16), "y.lora_B.core": (16, 16)}


def _state(rounds: int, quant: str = "int4", density: float = 1.0) -> ServerState:
    rng = np.random.default_rng(0)
    init = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    st = ServerState.fresh(init)
    for r in range(1, rounds + 1):
        st.global_adapter = {k: v + rng.normal(size=v.shape).astype(np.float32) * 0.01
                             for k, v in st.global_adapter.items()}
        advance_broadcast(st, r, codec.CodecConfig(density=density, quant=quant), SHAPES)
    return st


def test_chain_rebuilds_the_broadcast_exactly_and_is_chosen_when_smaller() -> None:
    st = _state(4)
    init = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    st.client_versions = {"behind": 1, "new": -1}
    patch = patch_for(st, "behind")
    assert patch.kind == fm.PATCH_CHAIN and patch.base_version == 1
    held = fm.apply_patch(init, fm.PATCH_DELTA, st.deltas[1], SHAPES)
    rebuilt = fm.apply_patch(held, patch.kind, patch.blob, SHAPES)
    assert adapter_digest(rebuilt) == adapter_digest(st.broadcast) == patch.digest
    # int4 deltas of 3 rounds are far smaller than fp32 values of every changed coordinate
    overwrite = fm.overwrite_patch(st.broadcast, {k: np.arange(256) for k in SHAPES})
    assert len(patch.blob) < len(overwrite) / 2
    new = patch_for(st, "new")  # a new client chains from the seeded version 0
    assert new.kind == fm.PATCH_CHAIN and new.base_version == 0
    assert adapter_digest(fm.apply_patch(init, new.kind, new.blob, SHAPES)) == new.digest


def test_overwrite_is_kept_when_it_is_smaller() -> None:
    st = _state(6, quant="fp32")  # fp32 dense deltas: six of them cost more than one overwrite
    st.client_versions = {"far": 0}
    assert patch_for(st, "far").kind == fm.PATCH_OVERWRITE


def test_hostile_chains_are_refused_before_anything_is_applied() -> None:
    st = _state(3)
    good = [st.deltas[2], st.deltas[3]]
    base = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    assert unpack_chain(pack_chain(good)) == good
    chain = pack_chain(good)
    bad = [b"NOPE" + chain[4:], chain[:-1], chain + b"\x00", b"FCCH\x00", b"FCCH\xff\xff\xff\xff\x7f",
           pack_chain([good[0], good[1][:-3]]), pack_chain([good[0], b"garbage"]),
           b"FCCH\x02\xff\xff\xff\x0f" + good[0]]
    for blob in bad:
        with pytest.raises(codec.UpdateRejected) as ei:
            fm.apply_patch(base, fm.PATCH_CHAIN, blob, SHAPES)
        assert not ei.value.internal
    with pytest.raises(codec.UpdateRejected, match="schema"):  # a chain for another adapter
        fm.apply_patch({"z": np.zeros(3, np.float32)}, fm.PATCH_CHAIN, chain, {"z": (3,)})
