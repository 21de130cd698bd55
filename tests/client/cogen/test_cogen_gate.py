"""Learned fusion gate trained over real gRPC, and the sketch-aware training helper."""

from __future__ import annotations

import pytest
import torch

from fedcogen.client.cogen.cogen_device import CogenDevice, DeviceConfig
from fedcogen.client.cogen.fusion import FusionGate
from fedcogen.client.cogen.gate_training import train_gate
from fedcogen.client.cogen.wire_capture import WireCapture
from fedcogen.models import load_model
from fedcogen.server.cogen.cloud_service import CloudConfig, start_cloud_server

EXAMPLES = [
    {
        "instruction": "Write a thank-you note to my neighbour.",
        "private_context": "Neighbour: Ilse Brandvold, watered my plants, secret CANARY-g8e1.",
        "target": "Dear Ilse, thank you so much for watering my plants while I was away!",
    },
    {
        "instruction": "Remind my team about the Friday demo.",
        "private_context": "Team Falcon, demo Friday 15:00 room Kestrel, CANARY-g8e2.",
        "target": "Hi team, a quick reminder that our demo is on Friday at 15:00.",
    },
]


@pytest.fixture(scope="module")
def env():
    cloud_lm, device_lm = load_model("tiny-large"), load_model("tiny")
    srv = start_cloud_server(CloudConfig(model="tiny-large", insecure=True, sketch_max_new_tokens=8), lm=cloud_lm)
    yield srv, device_lm
    srv.stop(grace=0.5)


def test_train_gate_over_grpc_lowers_loss_and_is_usable(env, tmp_path):
    srv, device_lm = env
    capture = WireCapture()
    dev = CogenDevice(
        DeviceConfig(device_model="tiny", cloud=srv.address, insecure=True, max_new_tokens=6),
        device_lm=device_lm,
        capture=capture,
    )
    try:
        gate, info = train_gate(dev, EXAMPLES, epochs=40, lr=0.05)
        assert info["positions"] > 20
        assert info["loss_after"] < info["loss_before"]
        for ex in EXAMPLES:  # the cloud saw instructions and answer prefixes, never the context
            assert not capture.contains(ex["private_context"])
            assert not capture.contains(ex["private_context"].split("secret ")[-1].split(", ")[-1])
        path = tmp_path / "gate.pt"
        gate.save(path)
    finally:
        dev.close()
    learned = CogenDevice(
        DeviceConfig(device_model="tiny", cloud=srv.address, insecure=True, max_new_tokens=6, gate_path=str(path)),
        device_lm=device_lm,
    )
    try:
        assert isinstance(learned.gate, FusionGate)
        res = learned.generate(EXAMPLES[0]["instruction"], EXAMPLES[0]["private_context"], "logit")
        assert res.tokens == 6 and res.cloud_calls == 6
        s = torch.log_softmax(torch.randn(3, 100), -1)
        w = learned.gate.weight(s, s.flip(0))
        assert ((w > 0) & (w < 1)).all()
    finally:
        learned.close()


def test_sketch_training_pairs_send_only_instructions(env):
    srv, device_lm = env
    capture = WireCapture()
    dev = CogenDevice(
        DeviceConfig(device_model="tiny", cloud=srv.address, insecure=True, sketch_max_new_tokens=8),
        device_lm=device_lm,
        capture=capture,
    )
    try:
        pairs = dev.sketch_training_pairs(EXAMPLES)
    finally:
        dev.close()
    assert [t for _, t in pairs] == [ex["target"] for ex in EXAMPLES]
    for (prompt, _), ex in zip(pairs, EXAMPLES, strict=True):
        assert ex["private_context"] in prompt and ex["instruction"] in prompt
        assert not capture.contains(ex["private_context"])
    assert sum(1 for r in capture.records if r.method.endswith("/Sketch") and r.direction == "sent") == 2


def test_tokenizer_mismatch_is_a_clear_error(env):
    from fedcogen.models import ModelError

    srv, device_lm = env
    dev = CogenDevice(
        DeviceConfig(device_model="tiny", cloud=srv.address, insecure=True, max_new_tokens=3), device_lm=device_lm
    )
    dev.fingerprint = "49152:0000000000000000"  # pretend the device has another vocabulary
    try:
        with pytest.raises(ModelError, match="tokenizer mismatch"):
            dev.generate(EXAMPLES[0]["instruction"], EXAMPLES[0]["private_context"], "logit")
    finally:
        dev.close()
