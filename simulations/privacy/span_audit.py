"""An audit that can fail: private-span protection off vs on, on a device that writes private facts.

Why: the wire audit of the logit/gated variants passes trivially for a device that never writes a
private fact. Here a personalised device (it does write the user's name, city, health details) is
audited twice per variant, with ``protect_private_spans`` off (the audit must FAIL) and on (it must
pass). Per variant and setting it reports: private facts the cloud received (distinct user/value
pairs, and their share of the facts the answers contain), the context-leakage attacker's attribute
recovery from the cloud-side transcript versus chance, and the quality cost of protection (ROUGE-L
and fact recall, paired per-user differences with 95% bootstrap CIs). With a learned gate it also
compares fixed-weight and learned-gate fusion side by side.

:func:`measure_detectors` is how the detector in ``client/cogen/private_spans.py`` was chosen: token-level
precision/recall of "kept off the wire" against the tokens that overlap a private value, on
device-only answers of the personalised device (no cloud needed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from fedcogen.client.cogen.cogen_device import CogenDevice, DeviceConfig
from fedcogen.client.cogen.fusion import FusionGate
from fedcogen.client.cogen.private_spans import PrivateSpanGuard, SpanDetector, private_token_labels
from fedcogen.models import LoadedModel, load_model, load_tokenizer, shared_model
from fedcogen.server.cogen.cloud_service import CloudConfig, start_cloud_server
from fedcogen.simulations.evaluation.metrics import (
    bootstrap_ci,
    paired_difference_ci,
    private_fact_recall,
    rouge_l_f1,
)
from fedcogen.simulations.federation.federation import load_run_adapter
from fedcogen.simulations.privacy.audit import cloud_view_text, collect_secrets, wire_audit
from fedcogen.simulations.privacy.context_leakage import context_leakage, profile_attributes
from fedcogen.simulations.privacy.fact_audit import (
    CORPORA,
    CorpusItem,
    Fact,
    audit_capture,
    load_corpus,
    measure_detector,
)
from fedcogen.text_match import contains_normalised, normalise

PROTECTED = ("logit", "gated")  # the variants that stream committed tokens
DETECTORS: dict[str, SpanDetector] = {
    "values": SpanDetector(values=True, ngram=0),
    "copy-3": SpanDetector(values=False, ngram=3),
    "copy-4": SpanDetector(values=False, ngram=4),
    "copy-6": SpanDetector(values=False, ngram=6),
    "values+copy-4": SpanDetector(values=True, ngram=4),
    "values+copy-6": SpanDetector(values=True, ngram=6),
}


@dataclass
class SpanAuditConfig:
    """What the audit runs: variants, and whether to compare a learned gate with fixed weights."""

    variants: tuple[str, ...] = ("sketch", "logit", "gated")
    attacker_fields: tuple[str, ...] = ("first_name", "city", "role", "manager", "condition", "money_item")
    seed: int = 0


def _user_secrets(fed: Any, uid: str) -> list[str]:
    return [s.value for s in collect_secrets({uid: fed.profile(uid)}, {uid: fed.canaries.get(uid, [])})[uid]]


# --------------------------------------------------------------------------- detector measurement


def measure_detectors(tokenizer: Any, answers: Sequence[tuple[Any, Sequence[int]]], fed: Any,
                      detectors: Mapping[str, SpanDetector] | None = None) -> dict[str, dict[str, float]]:
    """Token precision/recall of each detector, and how many (answer, fact) pairs still leak.

    ``answers``: (task, generated token ids) pairs. A token is *withheld* when the guard marked it
    private or never released it; truth = the token overlaps one of the user's private values or
    canaries. ``facts_leaked`` counts private values whose whole text is in the released stream.
    The guard gets the task's private context only; the user's values are the audit's answer key.
    """
    out: dict[str, dict[str, float]] = {}
    for name, det in (detectors or DETECTORS).items():
        tp = fp = fn = 0
        leaked = written = 0
        for task, ids in answers:
            secrets = _user_secrets(fed, task.user_id)
            truth = private_token_labels(tokenizer, ids, secrets)
            guard = PrivateSpanGuard.for_context(tokenizer, task.private_context, detector=det)
            for t in ids:
                guard.commit(t)
            withheld = [p or i >= guard.released for i, p in enumerate(guard.private)]
            tp += sum(a and b for a, b in zip(withheld, truth, strict=True))
            fp += sum(a and not b for a, b in zip(withheld, truth, strict=True))
            fn += sum(b and not a for a, b in zip(withheld, truth, strict=True))
            text_norm = normalise(tokenizer.decode(list(ids), skip_special_tokens=True))
            sent_norm = normalise(tokenizer.decode(guard.sent, skip_special_tokens=True))
            for s in secrets:
                if contains_normalised(text_norm, s):
                    written += 1
                    leaked += contains_normalised(sent_norm, s)
        out[name] = {"precision": tp / (tp + fp) if tp + fp else 1.0, "recall": tp / (tp + fn) if tp + fn else 1.0,
                     "withheld_share": (tp + fp) / max(1, tp + fp + fn + _public_sent(tp, fp, fn, answers)),
                     "facts_written": written, "facts_leaked": leaked}
    return out


def _public_sent(tp: int, fp: int, fn: int, answers: Sequence[tuple[Any, Sequence[int]]]) -> int:
    return sum(len(ids) for _, ids in answers) - tp - fp - fn


# --------------------------------------------------------------------------- the audit


def _facts_seen(fed: Any, tasks: Sequence[Any], results: Sequence[Any], audit: dict[str, Any]) -> dict[str, Any]:
    """Distinct (user, value) pairs the cloud received, and how many the answers wrote at all."""
    written: set[tuple[str, str]] = set()
    for task, res in zip(tasks, results, strict=True):
        text = normalise(res.text)
        written |= {(task.user_id, s) for s in _user_secrets(fed, task.user_id) if contains_normalised(text, s)}
    seen = {(uid, h["value"]) for uid, d in audit["devices"].items() for h in d["hits"]}
    return {"facts_seen": len(seen), "facts_written": len(written),
            "share_seen": len(seen & written) / len(written) if written else 0.0}


def _quality(tasks: Sequence[Any], results: Sequence[Any]) -> dict[str, dict[str, float]]:
    """Per-user mean ROUGE-L and fact recall."""
    by_user: dict[str, dict[str, list[float]]] = {}
    for task, res in zip(tasks, results, strict=True):
        d = by_user.setdefault(task.user_id, {"rouge_l": [], "fact_recall": []})
        d["rouge_l"].append(rouge_l_f1(res.text, task.reference))
        fr = private_fact_recall(res.text, task.private_facts)
        if fr is not None:
            d["fact_recall"].append(fr)
    return {m: {u: float(np.mean(v[m])) for u, v in by_user.items() if v[m]} for m in ("rouge_l", "fact_recall")}


def audit_setting(device: Any, tasks: Sequence[Any], fed: Any, variant: str, *, attacker: Any = None,
                  fields: Sequence[str] = ()) -> dict[str, Any]:
    """One variant with the device's current settings: wire audit, facts seen, attacker, quality."""
    # the guard sees each task's private context only: the profile values and canaries the audit
    # searches for below are its answer key, never handed to the device
    results = device.generate_batch([(t.instruction, t.private_context) for t in tasks], variant)
    device.capture.clear()
    received: dict[str, list[Any]] = {}
    for task, res in zip(tasks, results, strict=True):
        received.setdefault(task.user_id, []).extend(res.wire_records)
    audit = wire_audit(received, fed.profiles, fed.canaries, tokenizer=device.tokenizer)
    views = {uid: cloud_view_text(recs, device.tokenizer) for uid, recs in received.items()}
    truths = {uid: profile_attributes(fed.profile(uid)) for uid in received}
    leak = context_leakage(views, truths, model=getattr(attacker, "model", None),
                           tokenizer=getattr(attacker, "tokenizer", None), fields=list(fields) or None)
    quality = _quality(tasks, results)
    return {
        "audit_pass": audit["pass"], "devices_failed": audit["n_failed"], "n_devices": audit["n_devices"],
        **_facts_seen(fed, tasks, results, audit),
        "attacker_substring_top1": leak["substring_top1"], "attacker_model_top1": leak["model_top1"],
        "attacker_chance": leak["chance"],
        "rouge_l": bootstrap_ci(list(quality["rouge_l"].values())).to_dict(),
        "fact_recall": bootstrap_ci(list(quality["fact_recall"].values())).to_dict(),
        "per_user": quality,
        "private_tokens_withheld": int(sum(r.private_tokens for r in results)),
        "cloud_call_fraction": float(np.mean([r.cloud_call_fraction for r in results])),
        "bytes_sent": float(np.mean([r.bytes_sent for r in results])),
        "hits": {uid: [h["value"] for h in d["hits"]][:5] for uid, d in audit["devices"].items() if d["hits"]},
    }


def _paired(a: dict[str, Any], b: dict[str, Any], names: tuple[str, str]) -> dict[str, Any]:
    return {m: paired_difference_ci(a["per_user"][m], b["per_user"][m], names=(*names, m)).to_dict()
            for m in ("rouge_l", "fact_recall")}


def run_span_audit(device: Any, tasks: Sequence[Any], fed: Any, config: SpanAuditConfig | None = None, *,
                   attacker: Any = None, gate: Any = None) -> dict[str, Any]:
    """Protection off and on for every variant (sketch is unaffected: run once); optional learned gate."""
    cfg = config or SpanAuditConfig()
    keep = (device.config.protect_private_spans, device.gate)
    rows: dict[str, dict[str, Any]] = {}
    try:
        for variant in cfg.variants:
            for protect in ((False, True) if variant in PROTECTED else (True,)):
                device.config.protect_private_spans = protect
                key = f"{variant}/{'on' if protect else 'off'}" if variant in PROTECTED else variant
                rows[key] = audit_setting(device, tasks, fed, variant, attacker=attacker, fields=cfg.attacker_fields)
        cost = {v: _paired(rows[f"{v}/on"], rows[f"{v}/off"], ("protected", "unprotected"))
                for v in cfg.variants if v in PROTECTED}
        gate_cmp = None
        if gate is not None and "logit" in cfg.variants:
            device.config.protect_private_spans, device.gate = True, gate
            rows["logit/on/learned-gate"] = audit_setting(device, tasks, fed, "logit", attacker=attacker,
                                                          fields=cfg.attacker_fields)
            gate_cmp = _paired(rows["logit/on/learned-gate"], rows["logit/on"], ("learned", "fixed"))
    finally:
        device.config.protect_private_spans, device.gate = keep
    unprotected_fail = all(not rows[f"{v}/off"]["audit_pass"] for v in cfg.variants if v in PROTECTED)
    protected_pass = all(r["audit_pass"] for k, r in rows.items() if not k.endswith("/off"))
    return {"tasks": len(tasks), "users": len({t.user_id for t in tasks}), "settings": rows,
            "quality_cost": cost, "learned_vs_fixed": gate_cmp,
            "unprotected_fails": unprotected_fail, "protected_passes": protected_pass}


# --------------------------------------------------------------------------- report


def heldout_tasks(fed: Any, users: Sequence[str], tasks_per_user: int) -> list[Any]:
    """The first ``tasks_per_user`` test tasks of each user (held-out tasks)."""
    return [t for u in users for t in fed.tasks_of(u, "test")[:tasks_per_user]]


def audit_adapter(fed: Any, tasks: Sequence[Any], *, device_model: str, cloud_model: str, adapter: str | None = None,
                  device_lm: Any = None, config: SpanAuditConfig | None = None, gate_file: str | None = None, attacker_lm: bool = False,
                  max_new_tokens: int = 64, gated_threshold: float = 2.5, seed: int = 0) -> dict[str, Any]:
    """:func:`run_span_audit` with a personalised device and an in-process cloud on loopback.

    ``device_lm``: an already loaded (personalised) device model instead of ``adapter``.
    ``gate_file``: a learned gate (``fedcogen gate train``) to compare with fixed-weight fusion.
    ``attacker_lm``: also run the cloud model as the context-leakage attacker (slower).
    """

    cloud_lm = shared_model(cloud_model, seed)
    cloud = start_cloud_server(CloudConfig(model=cloud_model, insecure=True, max_batch=max(16, len(tasks)),
                                           sketch_max_new_tokens=max_new_tokens), lm=cloud_lm)
    device = CogenDevice(DeviceConfig(device_model=device_model, adapter=adapter, seed=seed, cloud=cloud.address,
                                      insecure=True, max_new_tokens=max_new_tokens,
                                      sketch_max_new_tokens=max_new_tokens, gated_threshold=gated_threshold),
                         device_lm=device_lm)
    try:
        gate = FusionGate.load(gate_file) if gate_file else None
        return run_span_audit(device, tasks, fed, config, attacker=cloud_lm if attacker_lm else None, gate=gate)
    finally:
        device.close()
        cloud.stop(grace=1.0)


def audit_run_dir(run_dir: Any, fed: Any, *, users: Sequence[str], tasks_per_user: int, variants: Sequence[str],
                  cloud_model: str, max_new_tokens: int, seed: int = 0) -> dict[str, Any]:
    """:func:`audit_adapter` on a federation run's final global adapter (``fedcogen privacy run``)."""

    lm, s = load_run_adapter(run_dir)
    device_lm = LoadedModel(model=lm.model, tokenizer=lm.tokenizer, name=f"{s['model']}+federated", source=str(run_dir))
    keep = tuple(v for v in variants if v in ("sketch", *PROTECTED))
    return audit_adapter(fed, heldout_tasks(fed, users, tasks_per_user), device_model=s["model"],
                         cloud_model=cloud_model, device_lm=device_lm, config=SpanAuditConfig(variants=keep),
                         max_new_tokens=max_new_tokens, seed=seed)


# --------------------------------------------------------------------------- corpora: detector + wire, per fact

#: public sentence openers of the scripted device (no word of them near-matches a corpus fact)
OPENERS = ("Here is one more thing:", "Also,", "Then there is", "And finally", "Worth saying:", "Next up,")


class ScriptedLM(torch.nn.Module):
    """The worst case for the wire: a device model that writes ``script`` (every fact of the user,
    in sentences) whatever its input. A real (tiny) model underneath keeps the KV cache honest."""

    def __init__(self, inner: torch.nn.Module, eos: int, script: Sequence[int] = ()) -> None:
        super().__init__()
        self.inner, self.eos, self.step = inner, eos, 0
        self.script: list[int] = list(script)
        self.config = inner.config

    def forward(self, input_ids=None, **kw):  # noqa: ANN001, ANN003, ANN201
        out = self.inner(input_ids=input_ids, **kw)
        self.step = 0 if input_ids.shape[1] > 1 else self.step + 1
        logits = torch.full_like(out.logits[:, -1:], -1e4)
        logits[:, 0, self.script[self.step] if self.step < len(self.script) else self.eos] = 0.0
        out.logits = logits
        return out


def fact_script(facts: Sequence[Fact]) -> str:
    """What the scripted device writes: each fact once, every other one in its variant form
    ("diabetes" for "diabetic"), so the guard must catch forms the context never wrote."""
    parts = []
    for i, f in enumerate(facts):
        form = f.variant if i % 2 and f.variant else f.text
        parts.append(f"{OPENERS[i % len(OPENERS)]} {form}.")
    return " ".join(parts)


@dataclass
class CorpusAuditConfig:
    """``fedcogen privacy corpora``: which corpora and split, the detector, the wire run's settings."""

    corpora: tuple[str, ...] = CORPORA
    split: str = "heldout2"
    variants: tuple[str, ...] = PROTECTED
    wire_items: int = 0  # items per corpus on the wire (0 = all of the split)
    cloud_model: str = "tiny"
    detector: SpanDetector = field(default_factory=SpanDetector)


def corpus_wire_audit(device: Any, items: Sequence[CorpusItem], variant: str) -> list[dict[str, Any]]:
    """Each item through ``device`` (a CogenDevice with a :class:`ScriptedLM`): the device writes
    the item's facts; the guard (if on) knows only the item's context. Per fact: did the cloud see it."""
    tok, lm = device.tokenizer, device.lm.model
    out = []
    for it in items:
        lm.script = list(tok(fact_script(it.facts), add_special_tokens=False)["input_ids"])
        device.config.max_new_tokens = len(lm.script) + 1
        device.capture.clear()
        res = device.generate_batch([("Write a short update for a friend.", it.context)], variant)[0]
        facts = audit_capture(res.wire_records, it.facts, tok)
        out.append({"id": it.id, "private_tokens": res.private_tokens, "facts": facts,
                    "seen": sum(f["seen"] for f in facts)})
    return out


def run_corpus_audit(config: CorpusAuditConfig | None = None, *, tokenizer: Any = None, cloud_address: str | None = None,
                     wire: bool = True) -> dict[str, Any]:
    """Per corpus: the detector's recall/precision on the split (no cloud) and, with ``wire``, the
    fact audit of logit and gated with protection off and on over gRPC (in-process cloud unless
    ``cloud_address``). ``facts_on_wire`` is the number of (item, fact) pairs the cloud saw."""
    cfg = config or CorpusAuditConfig()
    cloud = None
    device = None
    if wire:
        if cloud_address is None:
            cloud = start_cloud_server(CloudConfig(model=cfg.cloud_model, insecure=True),
                                       lm=shared_model(cfg.cloud_model, 0))
            cloud_address = cloud.address
        lm = load_model("tiny")
        device = CogenDevice(DeviceConfig(device_model="tiny", cloud=cloud_address, insecure=True, gated_threshold=-1.0,
                                          no_repeat_ngram=0, repetition_penalty=1.0, private_spans=cfg.detector),
                             device_lm=LoadedModel(ScriptedLM(lm.model, lm.tokenizer.eos_token_id), lm.tokenizer,
                                                   "scripted-tiny", "span corpora"))
        tokenizer = device.tokenizer
    tokenizer = tokenizer or load_tokenizer("tiny")
    corpora: dict[str, Any] = {}
    try:
        for name in cfg.corpora:
            items = load_corpus(name, cfg.split)
            row: dict[str, Any] = {"detector": measure_detector(tokenizer, items, cfg.detector)}
            if device is not None:
                wire_items = items[: cfg.wire_items] if cfg.wire_items else items
                row["wire"] = {}
                for variant in cfg.variants:
                    for protect in (False, True):
                        device.config.protect_private_spans = protect
                        per_item = corpus_wire_audit(device, wire_items, variant)
                        row["wire"][f"{variant}/{'on' if protect else 'off'}"] = {
                            "items": len(per_item), "facts": sum(len(r["facts"]) for r in per_item),
                            "facts_on_wire": sum(r["seen"] for r in per_item),
                            "private_tokens_withheld": sum(r["private_tokens"] for r in per_item),
                            "per_item": per_item}
            corpora[name] = row
    finally:
        if device is not None:
            device.close()
        if cloud is not None:
            cloud.stop(grace=1.0)
    wire_rows = [(n, k, w) for n, r in corpora.items() for k, w in r.get("wire", {}).items()]
    return {"split": cfg.split, "variants": list(cfg.variants), "detector": asdict(cfg.detector), "corpora": corpora,
            "protected_zero": all(w["facts_on_wire"] == 0 for _, k, w in wire_rows if k.endswith("/on")),
            "unprotected_leaks": all(w["facts_on_wire"] > 0 for _, k, w in wire_rows if k.endswith("/off"))}


def corpus_audit_markdown(res: dict[str, Any]) -> list[str]:
    """The per-corpus recall/precision table, the wire table and every fact the cloud saw."""
    lines = [f"Detector on the `{res['split']}` split (guard built from each context alone; answer key read "
             "by the audit only):", "",
             "| corpus | items | facts | recall | precision (tokens) | context withheld | missed |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name, r in res["corpora"].items():
        d = r["detector"]
        missed = ", ".join(sorted({m["fact"] for m in d["missed"]})) or "-"
        lines.append(f"| {name} | {d['items']} | {d['facts']} | {d['recall']:.3f} ({d['facts_found']}/{d['facts']}) "
                     f"| {d['precision']:.3f} | {d.get('withheld_share', float('nan')):.1%} | {missed} |")
    if any("wire" in r for r in res["corpora"].values()):
        lines += ["", "Wire (scripted device writes every fact, half in a variant form; fact audit: exact, near "
                  "and token-id matches):", "",
                  "| corpus | setting | items | facts on the wire / written | tokens withheld |", "|---|---|---:|---:|---:|"]
        for name, r in res["corpora"].items():
            for key, w in r.get("wire", {}).items():
                lines.append(f"| {name} | {key} | {w['items']} | {w['facts_on_wire']} / {w['facts']} | "
                             f"{w['private_tokens_withheld']} |")
        seen = [(name, key, it["id"], f) for name, r in res["corpora"].items()
                for key, w in r.get("wire", {}).items() if key.endswith("/on")
                for it in w["per_item"] for f in it["facts"] if f["seen"]]
        lines += ["", "Facts the cloud saw with protection on: " + (
            "none." if not seen else "; ".join(f"{n} {k} {i}: {f['fact']!r} ({', '.join(f['found_in'])})"
                                                for n, k, i, f in seen))]
    return lines
