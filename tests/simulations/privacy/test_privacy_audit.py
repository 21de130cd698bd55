"""Wire audit catches a deliberately leaked canary/value and passes a clean capture; the context-leakage
attacker recovers attributes from a leaky view and not from a clean one."""

from __future__ import annotations

import pytest

from fedcogen import dataset as d
from fedcogen.client.cogen.wire_capture import WireCapture
from fedcogen.protocols import cogen_pb2 as pb
from fedcogen.simulations.privacy import audit
from fedcogen.simulations.privacy import context_leakage as leak


@pytest.fixture(scope="module")
def fed():
    return d.generate_federation(d.FederationConfig(n_users=3, seed=0))


@pytest.fixture(scope="module")
def tok():
    from fedcogen.models import load_tokenizer

    return load_tokenizer("tiny")


def _capture(messages) -> WireCapture:
    cap = WireCapture()
    for m in messages:
        cap.record("/fedcogen.cogen.v1.CloudLM/Test", "sent", m)
    cap.record("/fedcogen.cogen.v1.CloudLM/Test", "received", pb.SketchReply(sketch="anything goes here"))
    return cap


def _clean_capture(fed, uid, tok) -> WireCapture:
    t = fed.tasks_of(uid, "test")[0]
    ids = tok("Thanks for the update, see you soon.", add_special_tokens=False)["input_ids"]
    return _capture([
        pb.SketchRequest(protocol_version=1, instruction=t.instruction),
        pb.DecodeRequest(open=pb.SessionOpen(protocol_version=1, instruction=t.instruction, k=8)),
        pb.DecodeRequest(step=pb.TokenStep(token_ids=ids)),
    ])


def test_clean_capture_passes(fed, tok):
    caps = {p.user_id: _clean_capture(fed, p.user_id, tok) for p in fed.profiles}
    caps["user-00"] = [caps["user-00"], b"\x00\x01flower-blob\xff" * 10]  # binary Flower payload too
    res = audit.wire_audit(caps, fed.profiles, fed.canaries, tokenizer=tok)
    assert res["pass"], res
    assert res["n_devices"] == 3 and res["devices"]["user-00"]["messages"] == 4
    assert res["devices"]["user-00"]["secrets_checked"] > 20


def test_leaked_canary_in_token_stream_fails(fed, tok):
    caps = {p.user_id: _clean_capture(fed, p.user_id, tok) for p in fed.profiles}
    canary = fed.canaries["user-01"][0]
    ids = tok("Sure. P.S. " + canary + ".", add_special_tokens=False)["input_ids"]
    caps["user-01"].record("/x", "sent", pb.DecodeRequest(step=pb.TokenStep(token_ids=ids)))
    res = audit.wire_audit(caps, fed.profiles, fed.canaries, tokenizer=tok)
    assert not res["pass"] and res["n_failed"] == 1
    dev = res["devices"]["user-01"]
    assert not dev["pass"] and res["devices"]["user-00"]["pass"]
    kinds = {h["kind"] for h in dev["hits"]}
    assert {"canary", "canary_secret"} <= kinds
    where = {w for h in dev["hits"] for w in h["found_in"]}
    assert "decoded_token_ids" in where and "token_id_run" in where
    assert not any("raw_utf8" in h["found_in"] for h in dev["hits"])  # token ids are not UTF-8


def test_leaked_value_in_raw_bytes_and_text(fed, tok):
    prof = fed.profile("user-02")
    blob = b"\x08\x96\x01" + prof.employer.encode() + b"\x00\x00"
    caps = {"user-02": [blob]}
    res = audit.wire_audit(caps, fed.profiles, fed.canaries, tokenizer=tok)
    assert not res["pass"]
    assert any(h["value"] == prof.employer and "raw_utf8" in h["found_in"] for h in res["devices"]["user-02"]["hits"])
    # a context-sending baseline: the private context inside the instruction string field
    t = fed.tasks_of("user-02", "test")[0]
    leaky = _capture([pb.EvalOnlyGenerateRequest(protocol_version=1, full_prompt=t.private_context)])
    res2 = audit.wire_audit({"user-02": leaky}, fed.profiles, fed.canaries, tokenizer=tok)
    assert not res2["pass"]
    assert any("text_fields" in h["found_in"] for h in res2["devices"]["user-02"]["hits"])


def test_cloud_view_text_decodes_tokens(fed, tok):
    cap = _clean_capture(fed, "user-00", tok)
    view = audit.cloud_view_text(cap, tok)
    assert fed.tasks_of("user-00", "test")[0].instruction in view
    assert "see you soon" in view
    assert "anything goes here" not in view  # received, not sent


def test_context_leakage_substring(fed):
    truths = {p.user_id: leak.profile_attributes(p) for p in fed.profiles}
    leaky = {p.user_id: "\n".join(t.private_context for t in fed.tasks_of(p.user_id, "train")) for p in fed.profiles}
    clean = {p.user_id: "\n".join(t.instruction for t in fed.tasks_of(p.user_id, "train")) for p in fed.profiles}
    r_leaky = leak.context_leakage(leaky, truths)
    r_clean = leak.context_leakage(clean, truths)
    assert r_leaky["verbatim_rate"] > 0.4 and r_leaky["substring_top1"] > 0.4, r_leaky
    assert r_clean["verbatim_rate"] == 0.0 and r_clean["substring_top1"] == 0.0, r_clean
    # chance = mean over (user, attribute) of 1 / number of candidates (the pool plus the true value)
    pools = leak.attribute_pools()
    sizes = [len(set(pools[a]) | {v}) for t in truths.values() for a, v in t.items() if a in pools]
    assert r_clean["chance"] == pytest.approx(sum(1 / n for n in sizes) / len(sizes), rel=1e-12)


@pytest.mark.slow
def test_context_leakage_model_attacker(fed):
    """The real SmolLM2 as attacker: copies an attribute from a leaky view, near chance on a clean one."""
    from fedcogen.models import shared_model

    lm = shared_model("smollm2")
    truths = {p.user_id: leak.profile_attributes(p) for p in fed.profiles}
    fields = ["city", "role"]
    leaky = {p.user_id: f"me: {p.name}\ncity: {p.city}\njob: {p.role}" for p in fed.profiles}
    clean = {p.user_id: fed.tasks_of(p.user_id, "test")[0].instruction for p in fed.profiles}
    kw = dict(model=lm.model, tokenizer=lm.tokenizer, fields=fields)
    r_leaky = leak.context_leakage(leaky, truths, **kw)
    r_clean = leak.context_leakage(clean, truths, **kw)
    assert r_leaky["model_top1"] >= 0.8, r_leaky
    assert r_clean["model_top1"] <= 0.34, r_clean
