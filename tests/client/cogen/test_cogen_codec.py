"""Unit tests of the CoGenesis contract pieces that need no server: codec, fusion, gate, stubs."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from fedcogen.client.cogen import fusion
from fedcogen.protocols import cogen_pb2 as pb
from fedcogen.protocols import gen_stubs
from fedcogen.protocols.codecs import logit_codec

V = 49152


@pytest.fixture(scope="module")
def logits() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(V, generator=g) * 4


def test_topk_roundtrip_is_a_proper_distribution(logits):
    for enc in ("fp16", "int8", "fp32"):
        packet = logit_codec.encode(logits, 64, enc)
        lp = logit_codec.decode(packet, V)
        assert lp.shape == (V,)
        assert torch.isfinite(lp).all()
        assert math.isclose(float(lp.double().exp().sum()), 1.0, rel_tol=1e-6)
        true = torch.log_softmax(logits, -1)
        top = torch.topk(true, 64).indices
        atol = {"fp16": 2e-2, "int8": 0.15, "fp32": 1e-4}[enc]
        assert torch.allclose(lp[top], true[top], atol=atol)
        assert int(lp.argmax()) == int(true.argmax())


def test_tail_tokens_share_the_missing_mass(logits):
    k = 32
    packet = logit_codec.encode(logits, k, "fp32")
    true = torch.log_softmax(logits, -1)
    top = torch.topk(true, k).indices
    tail_mass = 1 - float(true[top].exp().sum())
    assert math.isclose(math.exp(packet.tail_logmass), tail_mass, rel_tol=1e-4)
    lp = logit_codec.decode(packet, V)
    mask = torch.ones(V, dtype=torch.bool)
    mask[top] = False
    tail = lp[mask]
    # uniform share of the missing mass, not a logit of 0 (which would be p = 1/Z-ish per token)
    assert torch.allclose(tail, torch.full_like(tail, math.log(tail_mass / (V - k))), atol=1e-4)
    assert float(tail.max()) < -5


def test_k_equal_vocabulary_matches_full(logits):
    full = logit_codec.decode(logit_codec.encode(logits, 0, "full"), V)
    topk = logit_codec.decode(logit_codec.encode(logits, V, "fp32"), V)
    assert torch.equal(full, topk)
    assert torch.allclose(full, torch.log_softmax(logits, -1), atol=1e-6)


def test_sizes_and_bad_packets(logits):
    p16 = logit_codec.encode(logits, 64, "fp16")
    p8 = logit_codec.encode(logits, 64, "int8")
    full = logit_codec.encode(logits, 0, "full")
    assert p8.ByteSize() < p16.ByteSize() < 1024 < full.ByteSize()
    assert full.ByteSize() >= V * 4
    with pytest.raises(logit_codec.CodecError, match="k must be"):
        logit_codec.encode(logits, 0, "fp16")
    bad = pb.LogitPacket()
    bad.CopyFrom(p16)
    bad.values = bad.values[:-2]
    with pytest.raises(logit_codec.CodecError, match="value bytes"):
        logit_codec.decode(bad)
    bad.CopyFrom(p16)
    bad.ids[0] = V + 5
    with pytest.raises(logit_codec.CodecError, match="outside vocabulary"):
        logit_codec.decode(bad)


def test_packed8_is_compact_adapts_k_and_rebuilds_a_proper_distribution(logits):
    true = torch.log_softmax(logits, -1)
    flat = logit_codec.encode(logits, 32, "packed8")  # a spread-out distribution: all 32 entries
    assert len(flat.values) == 3 * 32 and not flat.ids
    peaked_logits = logits.clone()
    peaked_logits[7] = 40.0  # one token holds > 99% of the mass: k shrinks to the minimum
    peaked = logit_codec.encode(peaked_logits, 32, "packed8")
    assert len(peaked.values) == 3 * logit_codec.PACKED_KMIN
    assert peaked.ByteSize() < flat.ByteSize() <= 3 * 32 + 24  # ~3 bytes per entry: uint16 id + uint8 code
    lp = logit_codec.decode(flat, V)
    assert math.isclose(float(lp.double().exp().sum()), 1.0, rel_tol=1e-6)
    top = torch.topk(true, 32).indices
    assert torch.allclose(lp[top], true[top], atol=logit_codec.PACKED_STEP)  # within one code step
    assert int(logit_codec.decode(peaked, V).argmax()) == 7
    bad = pb.LogitPacket()
    bad.CopyFrom(flat)
    bad.values = bad.values[:-1]
    with pytest.raises(logit_codec.CodecError, match="3 per entry"):
        logit_codec.decode(bad)
    bad.CopyFrom(flat)
    bad.offset = float("nan")
    with pytest.raises(logit_codec.CodecError, match="bad top value"):
        logit_codec.decode(bad)
    with pytest.raises(logit_codec.CodecError, match="at most 65536"):
        logit_codec.encode(torch.zeros(70_000), 8, "packed8")


def test_a_block_rebuilds_each_position(logits):
    rows = torch.stack([logits, logits.roll(5), logits * 0.5])
    block = logit_codec.encode_block(rows, 16, "packed8", position=3)
    assert block.position == 3 and len(block.packets) == 3 and not block.packets[0].vocab_size
    for got, row in zip(logit_codec.decode_block(block, V), rows, strict=True):
        assert torch.equal(got, logit_codec.decode(logit_codec.encode(row, 16, "packed8"), V))


def test_fusion_formula_and_endpoints():
    g = torch.Generator().manual_seed(1)
    s = torch.log_softmax(torch.randn(100, generator=g), -1)
    c = torch.log_softmax(torch.randn(100, generator=g), -1)
    assert torch.allclose(fusion.fuse_logprobs(s, c, 1.0), s, atol=1e-6)
    assert torch.allclose(fusion.fuse_logprobs(s, c, 0.0), c, atol=1e-6)
    fused = fusion.fuse_logprobs(s, c, 0.3)
    direct = 0.3 * s + 0.7 * c
    direct = direct - torch.logsumexp(direct, -1)
    assert torch.allclose(fused, direct, atol=1e-6)


def test_learned_gate_learns_which_side_to_trust(tmp_path):
    # The target always follows the "large" side: the gate must push w towards 0 and lower the loss.
    g = torch.Generator().manual_seed(2)
    n, v = 256, 50
    s = torch.log_softmax(torch.randn(n, v, generator=g) * 2, -1)
    c = torch.log_softmax(torch.randn(n, v, generator=g) * 2, -1)
    y = c.argmax(-1)
    gate, info = fusion.fit_gate(s, c, y, fusion.GateTrainConfig(epochs=80, lr=0.05))
    assert info["loss_after"] < info["loss_before"] - 0.1
    with torch.no_grad():
        assert float(gate.weight(s, c).mean()) < 0.4
    gate.save(tmp_path / "gate.pt")
    again = fusion.FusionGate.load(tmp_path / "gate.pt")
    assert torch.allclose(again(s[:3], c[:3]), gate(s[:3], c[:3]))


def test_generated_stubs_are_fresh():
    assert gen_stubs.stale_files() == []


def test_stale_stub_check_detects_a_changed_proto(tmp_path, monkeypatch):
    for f in ("cogen.proto", "cogen_pb2.py", "cogen_pb2_grpc.py"):
        shutil.copy(gen_stubs.HERE / f, tmp_path / f)
    proto = tmp_path / "cogen.proto"
    proto.write_text(proto.read_text().replace("message SessionClose {", "message SessionClose {\n  uint32 extra = 9;"))
    monkeypatch.setattr(gen_stubs, "HERE", tmp_path)
    assert "cogen_pb2.py" in gen_stubs.stale_files()


def test_grpc_stub_import_is_package_relative():
    text = (gen_stubs.HERE / "cogen_pb2_grpc.py").read_text()
    assert "from fedcogen.protocols import cogen_pb2" in text
    assert "\nimport cogen_pb2" not in text
