"""The audit can fail: over real gRPC on loopback, a device model that copies its private context makes
the wire audit FAIL for logit and gated without private-span protection and PASS with it; the
public-data gate trainer never sends a private value or a word 4-gram of the private texts."""

from __future__ import annotations

import pytest
import torch

from fedcogen import dataset as d
from fedcogen.client.cogen.cogen_device import CogenDevice, DeviceConfig
from fedcogen.client.cogen.private_spans import PrivateSpanGuard
from fedcogen.client.cogen.public_gate import train_public_gate
from fedcogen.client.cogen.wire_capture import WireCapture
from fedcogen.models import LoadedModel, load_model
from fedcogen.server.cogen.cloud_service import CloudConfig, start_cloud_server
from fedcogen.simulations.privacy.audit import cloud_view_text, sent_payloads, wire_audit
from fedcogen.simulations.privacy.span_audit import ScriptedLM, SpanAuditConfig, run_span_audit
from fedcogen.text_match import normalise as norm_text

pytestmark = pytest.mark.timeout(600)


class CopyingModel(torch.nn.Module):
    """The worst case for the wire: a device model that writes its private context out verbatim
    (from the profile's ``me:`` line on). A real tiny model underneath keeps the KV cache honest."""

    def __init__(self, inner: torch.nn.Module, start_ids: list[int], eos: int) -> None:
        super().__init__()
        self.inner, self.start_ids, self.eos = inner, start_ids, eos
        self.config = inner.config
        self.rows: list[list[int]] = []
        self.prompt_len: list[int] = []

    def _next(self, b: int) -> int:
        row, n = self.rows[b], len(self.start_ids)
        start = next(i for i in range(len(row)) if row[i:i + n] == self.start_ids)
        src = start + len(row) - self.prompt_len[b]
        return row[src] if src < self.prompt_len[b] else self.eos

    def forward(self, input_ids=None, attention_mask=None, **kw):  # noqa: ANN001, ANN003, ANN201
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask, **kw)
        if input_ids.shape[1] > 1:
            mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
            self.rows = [r[m.bool()].tolist() for r, m in zip(input_ids, mask, strict=True)]
            self.prompt_len = [len(r) for r in self.rows]
        else:
            for r, t in zip(self.rows, input_ids[:, 0].tolist(), strict=True):
                r.append(t)
        logits = torch.full_like(out.logits[:, -1:], -1e4)
        for b in range(len(self.rows)):
            logits[b, 0, self._next(b)] = 0.0
        out.logits = logits
        return out


@pytest.fixture(scope="module")
def cloud():
    srv = start_cloud_server(CloudConfig(model="tiny", insecure=True), lm=load_model("tiny"))
    yield srv
    srv.stop(grace=1.0)


@pytest.fixture(scope="module")
def fed():
    return d.generate_federation(d.FederationConfig(n_users=3, seed=0))


def _copying_device(cloud) -> CogenDevice:
    lm = load_model("tiny")
    tok = lm.tokenizer
    model = CopyingModel(lm.model, tok("me:", add_special_tokens=False)["input_ids"], tok.eos_token_id)
    cfg = DeviceConfig(device_model="tiny", cloud=cloud.address, insecure=True, max_new_tokens=24,
                       gated_threshold=-1.0, no_repeat_ngram=0, repetition_penalty=1.0)
    return CogenDevice(cfg, device_lm=LoadedModel(model, tok, "copying-tiny", "test"))


def test_audit_fails_without_protection_and_passes_with_it(cloud, fed):
    dev = _copying_device(cloud)
    tasks = [t for u in d.user_ids(fed) for t in fed.tasks_of(u, "test")[:1]]
    try:
        result = run_span_audit(dev, tasks, fed, SpanAuditConfig(variants=("sketch", "logit", "gated")))
    finally:
        dev.close()
    s = result["settings"]
    for v in ("logit", "gated"):
        assert not s[f"{v}/off"]["audit_pass"], v  # the copying device leaks without protection ...
        assert s[f"{v}/off"]["facts_seen"] > 0
        assert s[f"{v}/on"]["audit_pass"], (v, s[f"{v}/on"]["hits"])  # ... and nothing with it
        assert s[f"{v}/on"]["facts_seen"] == 0
        assert s[f"{v}/on"]["private_tokens_withheld"] > 0
    assert s["sketch"]["audit_pass"]
    assert result["unprotected_fails"] and result["protected_passes"]


def test_gate_trainer_sends_no_private_value_or_context_4gram(cloud, fed):
    uid = d.user_ids(fed)[0]
    private_texts = [t.private_context for s in ("train", "val", "test") for t in fed.tasks_of(uid, s)]
    private_texts += [h.text for h in fed.history_of(uid)]
    public = d.generate_federation(d.FederationConfig(n_users=3, seed=1234))  # fake users the cloud may see
    examples = [{"instruction": t.instruction, "private_context": t.private_context, "target": t.reference}
                for u in d.user_ids(public) for t in public.tasks_of(u, "train")[:4]]
    cap = WireCapture()
    dev = CogenDevice(DeviceConfig(device_model="tiny", cloud=cloud.address, insecure=True), capture=cap)
    try:
        gate, stats = train_public_gate(dev, examples, private_texts, extra_values=fed.profile(uid).private_values,
                                        epochs=3, max_target_tokens=16)
    finally:
        dev.close()
    assert stats["examples_used"] > 0 and stats["positions"] > 0
    audit = wire_audit({uid: cap}, fed.profiles, fed.canaries, tokenizer=dev.tokenizer)
    assert audit["pass"], audit["devices"][uid]["hits"]
    grams = set()
    for text in private_texts:
        w = norm_text(text).split()
        grams |= {tuple(w[i:i + 4]) for i in range(len(w) - 3)}
    views = [cloud_view_text(p, dev.tokenizer) for p in sent_payloads(cap)]  # each message on its own
    stream = dev.tokenizer.decode([i for p in sent_payloads(cap) for i in p.token_ids if p.texts == []])
    for view in [*views, stream]:
        w = norm_text(view).split()
        shared = {tuple(w[i:i + 4]) for i in range(len(w) - 3)} & grams
        assert not shared, shared




def test_speculative_drafts_never_carry_a_private_token(cloud, fed):
    """The logit default drafts several tokens per round: a draft stops before the first private or
    held token, so no single step on the wire (draft included) carries a private value's tokens. The
    guard gets the context only; the values it must keep off are all in that context (a value the
    device writes from elsewhere, e.g. a stored appointment, is beyond a context-only detector)."""
    uid = d.user_ids(fed)[0]
    task = fed.tasks_of(uid, "test")[0]
    values = list(fed.profile(uid).private_values)
    lm = load_model("tiny")
    tok = lm.tokenizer
    script = ("Thanks for the note, it was lovely to hear from you and the whole team. Dear Bjorn Oyelaran, "
              "the calligraphy class in Malmo starts next to Saffron Biotech and I hope that you can join us there. "
              "With best wishes and many thanks for all of the help you gave us this year.")
    cfg = DeviceConfig(device_model="tiny", cloud=cloud.address, insecure=True, max_new_tokens=80,
                       no_repeat_ngram=0, repetition_penalty=1.0)
    scripted = ScriptedLM(lm.model, tok.eos_token_id, script=tok(script, add_special_tokens=False)["input_ids"])
    dev = CogenDevice(cfg, device_lm=LoadedModel(scripted, tok, "scripted", "t"))
    assert dev.config.draft_tokens > 1
    try:
        ans = dev.generate_batch([(task.instruction, task.private_context)], "logit")[0]  # context only
    finally:
        dev.close()
    assert ans.text.strip() == script
    assert ans.private_tokens > 0  # the device did write private tokens ...
    assert ans.cloud_round_trips < ans.cloud_calls / 2  # ... while drafts of several tokens went out
    audit = wire_audit({uid: dev.capture}, fed.profiles, fed.canaries, tokenizer=dev.tokenizer)
    assert audit["pass"], audit["devices"][uid]["hits"]
    guard = PrivateSpanGuard.for_context(tok, task.private_context, values)  # the audit's list, for checking only
    steps = [list(r.message.step.token_ids) for r in dev.capture.records
             if r.direction == "sent" and r.message.WhichOneof("kind") == "step"]
    assert max(len(s) for s in steps) > 4
    for ids in steps:  # each message alone, drafts included
        for run in guard._value_runs:
            n = len(run)
            assert not any(tuple(ids[i:i + n]) == run for i in range(len(ids) - n + 1)), tok.decode(run)
