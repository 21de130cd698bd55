"""Wire audit and the CoGenesis context-leakage attacker: what could the cloud learn from the wire?

Two complementary checks, both run on *everything that left a device*:

* :func:`wire_audit` is a verifier: it searches every sent byte for every private profile value and
  canary of the device's user, as UTF-8 bytes, inside decoded protobuf string fields, inside text
  decoded from token-id streams (the logit variants send generated token ids), and as token-id runs
  (the value tokenised with and without a leading space). Any hit fails the device. The raw-byte
  search skips values shorter than ``min_raw_len`` characters, because short strings (e.g. "Cork")
  occur by chance inside binary payloads (quantised floats); those values are still searched in all
  decoded text with whole-word matching, which is where a real leak of them would show up.
* :func:`context_leakage` is an adversary: given the cloud's view of each user (all text it can
  decode from requests), it guesses each private attribute from its public pool of candidates, by
  (a) exact substring match and (b) an attacker language model (the cloud model) that scores
  ``"<view>\\n<question> <candidate>"`` and picks the candidate that the view makes most likely
  *relative to* the same question without the view (contextual calibration, so the model's prior
  preference for common names does not count as leakage). Reported as top-1 accuracy vs chance.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedcogen.text_match import contains_normalised, normalise

# --------------------------------------------------------------------------- cloud view


@dataclass
class SentPayload:
    """One message that left a device: its bytes and what can be decoded from it."""

    raw: bytes
    texts: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    source: str = ""


def _proto_strings(msg: Any) -> tuple[list[str], list[int]]:
    """All string fields (recursively) and all ``*ids`` uint fields of a protobuf message."""
    texts: list[str] = []
    ids: list[int] = []
    try:
        fields = msg.ListFields()
    except AttributeError:
        return texts, ids
    for desc, value in fields:
        is_repeated = getattr(desc, "is_repeated", None)
        repeated = is_repeated if is_repeated is not None else desc.label == desc.LABEL_REPEATED
        items = list(value) if repeated else [value]
        for item in items:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, int) and desc.name.endswith("ids"):
                ids.append(int(item))
            elif hasattr(item, "ListFields"):
                t, i = _proto_strings(item)
                texts += t
                ids += i
    return texts, ids


def sent_payloads(capture: Any) -> list[SentPayload]:
    """Normalise a capture into :class:`SentPayload` items (only what the device *sent*).

    Accepts a ``WireCapture`` (its ``records`` with direction ``"sent"``), a ``WireRecord``, raw
    ``bytes``, a ``str``, a protobuf message, a :class:`SentPayload`, or an iterable of those.
    """
    if capture is None:
        return []
    if isinstance(capture, SentPayload):
        return [capture]
    if isinstance(capture, bytes | bytearray | memoryview):
        return [SentPayload(bytes(capture), source="bytes")]
    if isinstance(capture, str):
        return [SentPayload(capture.encode("utf-8"), texts=[capture], source="text")]
    if hasattr(capture, "records") and not hasattr(capture, "direction"):
        return sent_payloads(list(capture.records))
    if hasattr(capture, "direction") and hasattr(capture, "raw"):
        if capture.direction != "sent":
            return []
        texts, ids = _proto_strings(capture.message) if capture.message is not None else ([], [])
        return [SentPayload(bytes(capture.raw), texts, ids, source=str(getattr(capture, "method", "")))]
    if hasattr(capture, "SerializeToString"):
        texts, ids = _proto_strings(capture)
        return [SentPayload(capture.SerializeToString(), texts, ids, source=type(capture).__name__)]
    if isinstance(capture, Iterable):
        out: list[SentPayload] = []
        for item in capture:
            out += sent_payloads(item)
        return out
    raise TypeError(f"cannot audit a capture of type {type(capture).__name__}")


def cloud_view_text(capture: Any, tokenizer: Any | None = None) -> str:
    """Everything readable the receiver got from one device: string fields plus decoded token ids."""
    parts: list[str] = []
    stream: list[int] = []
    for p in sent_payloads(capture):
        parts += p.texts
        stream += p.token_ids
    if stream and tokenizer is not None:
        parts.append(tokenizer.decode(stream, skip_special_tokens=True))
    return "\n".join(parts)


def _token_runs(tokenizer: Any, value: str) -> list[list[int]]:
    runs = []
    for v in (value, " " + value):
        ids = tokenizer(v, add_special_tokens=False)["input_ids"]
        if ids and ids not in runs:
            runs.append(list(ids))
    return runs


def _has_run(stream: Sequence[int], run: Sequence[int]) -> bool:
    n = len(run)
    if n == 0 or n > len(stream):
        return False
    first = run[0]
    for i in range(len(stream) - n + 1):
        if stream[i] == first and list(stream[i : i + n]) == list(run):
            return True
    return False


@dataclass
class Secret:
    """One value that must never leave its owner's device."""

    owner: str
    kind: str  # "profile" | "canary"
    value: str


def _profile_values(profile: Any) -> list[str]:
    if isinstance(profile, Mapping):
        vals = profile.get("private_values")
        if vals is None:
            vals = [v for v in profile.values() if isinstance(v, str)]
        return [str(v) for v in vals]
    if hasattr(profile, "private_values"):
        return [str(v) for v in profile.private_values]
    if isinstance(profile, str):
        return [profile]
    return [str(v) for v in profile]


def collect_secrets(profiles: Any, canaries: Any) -> dict[str, list[Secret]]:
    """``{user_id: [Secret, ...]}`` from profiles (mapping or list of UserProfile) and canaries.

    ``canaries``: ``{user_id: [canary text, ...]}`` (the generator's format) or a list of objects /
    dicts with ``owner``/``user_id`` and ``text`` (or ``prefix`` + ``secret``).
    """
    out: dict[str, list[Secret]] = {}
    if isinstance(profiles, Mapping):
        items = list(profiles.items())
    else:
        items = [(str(getattr(p, "user_id", None) or p["user_id"]), p) for p in profiles or []]
    for uid, prof in items:
        out.setdefault(str(uid), []).extend(Secret(str(uid), "profile", v) for v in _profile_values(prof))
    if isinstance(canaries, Mapping):
        for uid, lst in canaries.items():
            out.setdefault(str(uid), []).extend(Secret(str(uid), "canary", str(c)) for c in lst)
    else:
        for c in canaries or []:
            if isinstance(c, Mapping):
                owner = str(c.get("owner") or c.get("user_id") or "")
                text = c.get("text") or (str(c.get("prefix", "")) + str(c.get("secret", "")))
                secret = c.get("secret")
            else:
                owner = str(getattr(c, "owner", "") or getattr(c, "user_id", ""))
                text = getattr(c, "text", None) or (getattr(c, "prefix", "") + getattr(c, "secret", ""))
                secret = getattr(c, "secret", None)
            out.setdefault(owner, []).append(Secret(owner, "canary", str(text).strip()))
            if secret:  # the secret alone must not leak either
                out[owner].append(Secret(owner, "canary_secret", str(secret)))
    for uid in list(out):  # the canary's secret part alone is the sensitive bit
        extra = []
        for s in out[uid]:
            if s.kind == "canary" and " " in s.value:
                tail = s.value.rsplit(" ", 1)[1]
                if len(tail) >= 4 and not any(t.value == tail for t in out[uid]):
                    extra.append(Secret(uid, "canary_secret", tail))
        out[uid] += extra
    return out


# --------------------------------------------------------------------------- wire audit


def wire_audit(
    captures: Mapping[str, Any],
    profiles: Any,
    canaries: Any,
    *,
    tokenizer: Any | None = None,
    min_raw_len: int = 5,
    all_users: bool = False,
) -> dict[str, Any]:
    """Search everything each device sent for its user's private values and canaries.

    ``captures`` maps a device id (= user id) to anything :func:`sent_payloads` accepts (CoGenesis
    ``WireCapture`` objects, serialized Flower messages as bytes, lists of both). By default each
    device is checked against its own user's secrets; ``all_users=True`` (or an unknown device id)
    checks every user's. Returns per-device hits with where they were found and pass/fail verdicts.
    """
    secrets = collect_secrets(profiles, canaries)
    everyone = [s for lst in secrets.values() for s in lst]
    devices: dict[str, Any] = {}
    for device_id, capture in captures.items():
        payloads = sent_payloads(capture)
        wanted = everyone if all_users or device_id not in secrets else secrets[device_id]
        raw_all = [p.raw for p in payloads]
        texts_norm = normalise("\n".join(t for p in payloads for t in p.texts))
        stream = [i for p in payloads for i in p.token_ids]
        decoded_norm = normalise(tokenizer.decode(stream, skip_special_tokens=True)) if stream and tokenizer else ""
        hits = []
        for s in wanted:
            where = []
            if len(s.value) >= min_raw_len:
                needles = {s.value.encode("utf-8"), s.value.lower().encode("utf-8")}
                if any(n in raw for raw in raw_all for n in needles):
                    where.append("raw_utf8")
            if texts_norm and contains_normalised(texts_norm, s.value):
                where.append("text_fields")
            if decoded_norm and contains_normalised(decoded_norm, s.value):
                where.append("decoded_token_ids")
            if stream and tokenizer is not None and any(_has_run(stream, r) for r in _token_runs(tokenizer, s.value)):
                where.append("token_id_run")
            if where:
                hits.append({"owner": s.owner, "kind": s.kind, "value": s.value, "found_in": where})
        devices[device_id] = {
            "messages": len(payloads),
            "bytes": int(sum(len(r) for r in raw_all)),
            "secrets_checked": len(wanted),
            "hits": hits,
            "pass": not hits,
        }
    return {
        "devices": devices,
        "pass": all(d["pass"] for d in devices.values()),
        "n_devices": len(devices),
        "n_failed": sum(1 for d in devices.values() if not d["pass"]),
        "bytes_audited": int(sum(d["bytes"] for d in devices.values())),
        "min_raw_len": min_raw_len,
    }


# --------------------------------------------------------------------------- context leakage attacker

#: Question asked to the attacker model per attribute (the candidate is appended after a space).
ATTRIBUTE_QUESTIONS: dict[str, str] = {
    "first_name": "The user's first name is",
    "last_name": "The user's surname is",
    "city": "The user lives in",
    "role": "The user works as a",
    "manager": "The user's manager is called",
    "employer": "The user works at",
    "condition": "The user has",
    "medication": "The user takes",
    "money_item": "The user is dealing with a",
}


def profile_attributes(profile: Any) -> dict[str, str]:
    """The guessable single-valued attributes of a generated ``UserProfile`` (or a dict of them)."""
    if isinstance(profile, Mapping):
        return {k: str(v) for k, v in profile.items() if k in ATTRIBUTE_QUESTIONS}
    out = {
        "first_name": profile.first_name,
        "last_name": profile.last_name,
        "city": profile.city,
        "role": profile.role,
        "manager": profile.manager,
        "employer": profile.employer,
        "condition": profile.health.get("condition", ""),
        "medication": profile.health.get("medication", ""),
        "money_item": profile.money.get("item", ""),
    }
    return {k: v for k, v in out.items() if v}


def attribute_pools() -> dict[str, list[str]]:
    """Candidate pools of the synthetic data generator (what an attacker knowing the format would try)."""
    from fedcogen import dataset as d

    return {
        "first_name": list(d.GIVEN_NAMES),
        "last_name": list(d.SURNAMES),
        "city": list(d.CITIES),
        "role": list(d.ROLES),
        "manager": list(d.GIVEN_NAMES),
        "employer": [f"{a} {b}" for a in d.EMPLOYER_PREFIXES for b in d.EMPLOYER_SUFFIXES],
        "condition": [c for c, _ in d.HEALTH],
        "medication": [m for _, m in d.HEALTH],
        "money_item": list(d.MONEY_ITEMS),
    }


def _substring_guess(view_norm: str, pool: Sequence[str]) -> str | None:
    found = [(view_norm.count(normalise(c)), c) for c in pool if contains_normalised(view_norm, c)]
    if not found:
        return None
    found.sort(key=lambda x: (-x[0], -len(x[1])))
    return found[0][1]


def _candidate_nll(model: Any, tokenizer: Any, context_ids: list[int], pool: Sequence[str], batch_size: int) -> np.ndarray:
    from fedcogen.simulations.attacks import sequence_nll

    items = []
    for c in pool:
        cand = tokenizer(" " + c, add_special_tokens=False)["input_ids"]
        items.append((list(context_ids) + cand, [-100] * len(context_ids) + cand))
    return sequence_nll(model, tokenizer, items, batch_size=batch_size, mean=False)


def context_leakage(
    views: Mapping[str, str],
    truths: Mapping[str, Mapping[str, str]],
    pools: Mapping[str, Sequence[str]] | None = None,
    *,
    model: Any | None = None,
    tokenizer: Any | None = None,
    max_view_tokens: int = 384,
    batch_size: int = 16,
    fields: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Top-1 attribute-inference accuracy of a cloud adversary from its view of each user.

    ``views``: user id -> text the cloud received (:func:`cloud_view_text`); ``truths``: user id ->
    attribute -> true value (:func:`profile_attributes`); ``pools``: attribute -> candidates
    (default :func:`attribute_pools`). ``substring`` guesses the most frequent pool value found in
    the view (no guess = wrong); ``model`` (if a model is given) picks the candidate with the largest
    log-likelihood gain from the view. Also reports the fraction of true values that appear verbatim.
    """
    pools = dict(pools or attribute_pools())
    attrs = list(fields or [f for f in ATTRIBUTE_QUESTIONS if f in pools])
    null_cache: dict[str, np.ndarray] = {}
    rows = []
    for uid, truth in truths.items():
        view = views.get(uid, "")
        view_norm = normalise(view)
        view_ids: list[int] = []
        if model is not None and tokenizer is not None and view:
            view_ids = tokenizer(view, add_special_tokens=False)["input_ids"][-max_view_tokens:]
        for attr in attrs:
            if attr not in truth or attr not in pools:
                continue
            pool = list(dict.fromkeys(pools[attr]))
            true = truth[attr]
            if true not in pool:
                pool.append(true)
            row: dict[str, Any] = {
                "user_id": uid, "attribute": attr, "chance": 1.0 / len(pool),
                "verbatim": contains_normalised(view_norm, true),
            }
            guess = _substring_guess(view_norm, pool)
            row["substring_correct"] = guess == true
            if model is not None and tokenizer is not None:
                q_ids = tokenizer(ATTRIBUTE_QUESTIONS.get(attr, f"The user's {attr} is"), add_special_tokens=False)[
                    "input_ids"
                ]
                if attr not in null_cache:
                    null_cache[attr] = _candidate_nll(model, tokenizer, q_ids, pool, batch_size)
                if view_ids:
                    nl = tokenizer("\n", add_special_tokens=False)["input_ids"]
                    with_view = _candidate_nll(model, tokenizer, view_ids + nl + q_ids, pool, batch_size)
                    gain = null_cache[attr] - with_view
                    row["model_correct"] = pool[int(np.argmax(gain))] == true
                else:
                    row["model_correct"] = False  # nothing seen: a guess from the prior is chance
            rows.append(row)

    def acc(key: str, subset: list[dict[str, Any]]) -> float | None:
        vals = [r[key] for r in subset if key in r]
        return float(np.mean(vals)) if vals else None

    per_attr = {
        a: {
            "substring_top1": acc("substring_correct", [r for r in rows if r["attribute"] == a]),
            "model_top1": acc("model_correct", [r for r in rows if r["attribute"] == a]),
            "verbatim": acc("verbatim", [r for r in rows if r["attribute"] == a]),
            "chance": acc("chance", [r for r in rows if r["attribute"] == a]),
        }
        for a in attrs
    }
    return {
        "n_users": len(truths),
        "n_guesses": len(rows),
        "substring_top1": acc("substring_correct", rows),
        "model_top1": acc("model_correct", rows),
        "verbatim_rate": acc("verbatim", rows),
        "chance": acc("chance", rows),
        "per_attribute": per_attr,
    }
