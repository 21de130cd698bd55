"""Wire audit: what could the cloud learn from the wire? A verifier on *everything that left a device*.

:func:`wire_audit` searches every sent byte for every private profile value and canary of the
device's user, as UTF-8 bytes, inside decoded protobuf string fields, inside text decoded from
token-id streams (the logit variants send generated token ids), and as token-id runs (the value
tokenised with and without a leading space). Any hit fails the device. The raw-byte search skips
values shorter than ``min_raw_len`` characters, because short strings (e.g. "Cork") occur by chance
inside binary payloads (quantised floats); those values are still searched in all decoded text with
whole-word matching, which is where a real leak of them would show up. Its adversarial counterpart
is :mod:`fedcogen.simulations.privacy.context_leakage`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
