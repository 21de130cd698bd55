"""The decoders are siblings behind one interface: the device picks one per variant, and a decoder uses
only the public surface the base's ``DecodingDevice`` names (no private member of the device, no import
of the device module, one list of variants)."""

from __future__ import annotations

import ast
import pathlib

import pytest

from fedcogen import variants
from fedcogen.client.cogen import cogen_device
from fedcogen.client.cogen.cogen_device import CogenDevice, DeviceConfig
from fedcogen.client.cogen.decoders.base import Decoder, DecodingDevice
from fedcogen.client.cogen.decoders.draft_edit import DraftEditDecoder
from fedcogen.client.cogen.decoders.gated import GatedDecoder
from fedcogen.client.cogen.decoders.per_token import PerTokenDecoder
from fedcogen.client.cogen.decoders.sketch import SketchDecoder
from fedcogen.client.cogen.decoders.speculative import SpeculativeDecoder

DECODERS = pathlib.Path(__file__).resolve().parents[3] / "client" / "cogen" / "decoders"


def _device(device_lm, **kw) -> CogenDevice:
    return CogenDevice(DeviceConfig(device_model="tiny", cloud="127.0.0.1:1", insecure=True, **kw), device_lm=device_lm)


def test_the_device_picks_one_decoder_per_variant(device_lm):
    dev = _device(device_lm)
    expect = {"logit": SpeculativeDecoder, "gated": GatedDecoder, "sketch": SketchDecoder, "device": PerTokenDecoder,
              "cloud": PerTokenDecoder, "cloud_with_context": PerTokenDecoder, "draft_edit": DraftEditDecoder}
    assert set(expect) == set(variants.VARIANTS)
    for variant, cls in expect.items():
        d = dev.decoder_for(variant, [])
        assert type(d) is cls and isinstance(d, Decoder), variant
    who = {v: (dev.decoder_for(v, []).use_cloud, dev.decoder_for(v, []).use_device)
           for v in ("device", "cloud", "cloud_with_context")}
    assert who == {"device": (False, True), "cloud": (True, False), "cloud_with_context": (True, False)}
    per_token = _device(device_lm, draft_tokens=0).decoder_for("logit", [])  # draft_tokens=0: one trip per token
    assert type(per_token) is PerTokenDecoder and (per_token.use_cloud, per_token.use_device) == (True, True)
    rows = [object(), object()]  # a lockstep batch above draft_max_batch (1) fuses per token: cheaper there
    assert type(dev.decoder_for("logit", rows)) is PerTokenDecoder
    assert type(_device(device_lm, draft_max_batch=2).decoder_for("logit", rows)) is SpeculativeDecoder
    with pytest.raises(ValueError, match="unknown variant 'nope'"):
        dev.decoder_for("nope", [])


def test_one_list_of_variants():
    assert cogen_device.VARIANTS is variants.VARIANTS


def _device_names(cls: type) -> set[str]:
    names = {n for n in vars(cls) if not n.startswith("_")}  # typing's own members are underscored
    return names | set(cls.__annotations__)


def test_decoders_use_only_the_public_device_surface():
    """Every ``device.x`` / ``dv.x`` a decoder reads is named by :class:`DecodingDevice`; none imports the device."""
    allowed = _device_names(DecodingDevice)
    assert {"fuse", "choose", "open_session", "config", "vocab_size"} <= allowed
    used: dict[str, set[str]] = {}
    for path in sorted(DECODERS.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert "cogen_device" not in (node.module or ""), f"{path.name} imports the device module"
            if not isinstance(node, ast.Attribute):
                continue
            base = node.value
            on_device = (isinstance(base, ast.Name) and base.id in ("dv", "device")) or (
                isinstance(base, ast.Attribute) and base.attr == "device"
                and isinstance(base.value, ast.Name) and base.value.id == "self")
            if on_device:
                used.setdefault(path.name, set()).add(node.attr)
    assert {"speculative.py", "gated.py", "per_token.py"} <= set(used)
    stray = {name: sorted(attrs - allowed) for name, attrs in used.items() if attrs - allowed}
    assert stray == {}, f"decoders reach past DecodingDevice: {stray}"
    for cls in (PerTokenDecoder, SpeculativeDecoder, GatedDecoder, SketchDecoder):  # the device satisfies it
        assert issubclass(cls, Decoder)
    assert all(hasattr(CogenDevice, n) or n in ("config", "stop_ids", "pad_id", "repetition") for n in allowed)
