"""Privacy attacks on the federated adapter: canary exposure and membership inference.

Why these two: they are the standard empirical checks that a DP guarantee (or its absence) shows
up in the trained model.

* **Canary exposure** (Carlini et al. 2019, "The Secret Sharer"): a random secret of a fixed format
  is planted in one user's training history. After training, rank the log-perplexity of the true
  secret (given its prefix context) among ``|R|`` random alternatives of the same format.
  ``exposure = log2(|R|) - log2(rank)``. A model that has not memorised the canary ranks it
  uniformly, so its expected exposure is about ``log2(e) ~ 1.44`` bits (reported as ``chance``);
  perfect memorisation gives ``log2(|R|)``.
* **Membership inference** (Yeom et al. 2018 loss threshold; Carlini et al. 2022 / Mireshghallah et
  al. 2022 reference-calibrated): members (clients' training texts) should have lower loss than
  held-out texts. The calibrated attack subtracts the loss under a reference model (the base model
  without adapter) so that "easy" texts do not look like members. Reported as ROC AUC and TPR at
  1% FPR (the low-FPR regime is the one that matters for privacy).

Everything works on any causal LM + tokenizer (a PEFT model included) and on ``(prompt, target)``
pairs formatted exactly as training formats them (:func:`fedcogen.client.fl.lora_training.encode_examples`),
so losses are measured on the same tokens the adapter was trained on.
"""

from __future__ import annotations

import contextlib
import math
import re
import string
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedcogen.client.fl.lora_training import encode_examples
from fedcogen.models import chat_input_ids
from fedcogen.prompts import DEVICE_SYSTEM

CHANCE_EXPOSURE = 1.0 / math.log(2.0)  # E[log2 N - log2 rank] for a uniform rank, as N grows


# --------------------------------------------------------------------------- metrics


def roc_auc(scores_pos: Sequence[float], scores_neg: Sequence[float]) -> float:
    """Area under the ROC curve = P(score_pos > score_neg) (ties count half); higher = member."""
    pos = np.asarray(scores_pos, dtype=np.float64)
    neg = np.asarray(scores_neg, dtype=np.float64)
    if pos.size == 0 or neg.size == 0:
        raise ValueError("roc_auc needs at least one positive and one negative score")
    allv = np.concatenate([pos, neg])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty_like(order, dtype=np.float64)
    sorted_v = allv[order]
    # average ranks for ties
    i = 0
    while i < len(sorted_v):
        j = i
        while j + 1 < len(sorted_v) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    r_pos = ranks[: pos.size].sum()
    return float((r_pos - pos.size * (pos.size + 1) / 2.0) / (pos.size * neg.size))


def tpr_at_fpr(scores_pos: Sequence[float], scores_neg: Sequence[float], fpr: float = 0.01) -> float:
    """Largest true-positive rate over thresholds whose false-positive rate is ``<= fpr``.

    With few negatives the achievable FPR is quantised (1/len(neg)); a threshold above every
    negative (FPR 0) is always allowed.
    """
    pos = np.asarray(scores_pos, dtype=np.float64)
    neg = np.asarray(scores_neg, dtype=np.float64)
    if pos.size == 0 or neg.size == 0:
        raise ValueError("tpr_at_fpr needs at least one positive and one negative score")
    best = 0.0
    for thr in np.unique(np.concatenate([pos, neg, [np.inf]])):
        f = float(np.mean(neg >= thr))
        if f <= fpr:
            best = max(best, float(np.mean(pos >= thr)))
    return best


def exposure_from_rank(rank: int, n_total: int) -> float:
    """``log2(n_total) - log2(rank)``; rank 1 = the canary is the most likely of all candidates."""
    return math.log2(n_total) - math.log2(rank)


# --------------------------------------------------------------------------- scoring


@contextlib.contextmanager
def adapter_disabled(model: Any) -> Iterator[Any]:
    """Run ``model`` without its LoRA adapter (the base model) if it is a PEFT model."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield model
    else:
        yield model


def _pad_id(tokenizer: Any) -> int:
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0))


def sequence_nll(
    model: Any, tokenizer: Any, items: Sequence[tuple[list[int], list[int]]], *, batch_size: int = 16,
    mean: bool = True,
) -> np.ndarray:
    """Negative log-likelihood (nats) of each ``(input_ids, labels)`` pair's labelled tokens.

    Labels use -100 for unscored positions (prompt, padding). ``mean=True`` returns the mean per
    scored token (the MIA loss), ``mean=False`` the sum (log-perplexity of a canary's secret).
    """
    import torch
    import torch.nn.functional as F

    pad = _pad_id(tokenizer)
    out = np.zeros(len(items), dtype=np.float64)
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(items), batch_size):
                chunk = items[start : start + batch_size]
                width = max(len(ids) for ids, _ in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                labels = torch.full((len(chunk), width), -100, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for i, (x, y) in enumerate(chunk):
                    ids[i, : len(x)] = torch.tensor(x)
                    labels[i, : len(y)] = torch.tensor(y)
                    mask[i, : len(x)] = 1
                logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1, :].float()
                tgt = labels[:, 1:]
                tok_loss = F.cross_entropy(
                    logits.reshape(-1, logits.size(-1)), tgt.reshape(-1), ignore_index=-100, reduction="none"
                ).view(tgt.shape)
                valid = (tgt != -100).float()
                sums = (tok_loss * valid).sum(dim=1)
                counts = valid.sum(dim=1).clamp(min=1)
                vals = sums / counts if mean else sums
                out[start : start + len(chunk)] = vals.double().numpy()
    finally:
        if was_training:
            model.train()
    return out


def encode_pairs(tokenizer: Any, pairs: Sequence[tuple[str, str]], max_seq_len: int = 256) -> list[tuple[list[int], list[int]]]:
    """(prompt, target) pairs tokenised exactly like training (chat prompt masked, target + EOS)."""
    return [(e.input_ids, e.labels) for e in encode_examples(tokenizer, pairs, max_seq_len=max_seq_len)]


# --------------------------------------------------------------------------- canaries


@dataclass
class CanarySpec:
    """One canary: ``prefix`` (text before the secret), ``secret`` and optionally the training
    ``prompt`` it followed (then it is scored inside the same chat format as training)."""

    prefix: str
    secret: str
    prompt: str | None = None
    canary_id: str = ""
    owner: str = ""

    @property
    def text(self) -> str:
        return self.prefix + self.secret


def _field(obj: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        if isinstance(obj, Mapping) and n in obj:
            return obj[n]
        if hasattr(obj, n):
            return getattr(obj, n)
    return default


def as_canary(obj: Any) -> CanarySpec:
    """Accept a CanarySpec, a dict or any object with prefix/secret (or text + secret) fields."""
    if isinstance(obj, CanarySpec):
        return obj
    secret = _field(obj, "secret", "value")
    prefix = _field(obj, "prefix")
    text = _field(obj, "text", "sentence")
    if secret is None:
        raise ValueError(f"canary {obj!r} has no 'secret' field")
    if prefix is None:
        if text is None or str(secret) not in str(text):
            raise ValueError(f"canary {obj!r} needs a 'prefix' or a 'text' containing its secret")
        prefix = str(text)[: str(text).index(str(secret))]
    return CanarySpec(
        prefix=str(prefix),
        secret=str(secret),
        prompt=_field(obj, "prompt"),
        canary_id=str(_field(obj, "canary_id", "id", default="")),
        owner=str(_field(obj, "owner", "user_id", "user", default="")),
    )


def random_like(secret: str, rng: np.random.Generator) -> str:
    """A random string of the same format: digits -> digits, letters -> letters (same case)."""
    out = []
    for ch in secret:
        if ch.isdigit():
            out.append(str(rng.integers(10)))
        elif ch in string.ascii_lowercase:
            out.append(string.ascii_lowercase[rng.integers(26)])
        elif ch in string.ascii_uppercase:
            out.append(string.ascii_uppercase[rng.integers(26)])
        else:
            out.append(ch)
    return "".join(out)


def _secret_tokens(tokenizer: Any, context_ids: list[int], prefix: str, secret: str) -> tuple[list[int], list[int]]:
    """ids/labels for context + prefix + secret with only the secret's tokens scored.

    Tokenises prefix+secret jointly (as in training) and scores the tokens after the longest common
    token prefix with the prefix alone, so BPE merges across the boundary cannot misalign.
    """
    full = tokenizer(prefix + secret, add_special_tokens=False)["input_ids"]
    pre = tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    common = 0
    while common < min(len(full), len(pre)) and full[common] == pre[common]:
        common += 1
    ids = list(context_ids) + list(full)
    labels = [-100] * (len(context_ids) + common) + list(full[common:])
    return ids, labels


def canary_exposure(
    model: Any,
    tokenizer: Any,
    canaries: Sequence[Any],
    n_alternatives: int = 1000,
    seed: int = 0,
    *,
    alternatives_fn: Callable[[Any, np.random.Generator], Any] | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> dict[str, Any]:
    """Exposure of each canary under ``model`` (+ adapter): ``log2(|R|) - log2(rank)``.

    ``R`` = the true secret plus ``n_alternatives`` random secrets of the same format (from
    ``alternatives_fn(canary, rng)`` if given, e.g. the data generator's ``random_canary_like``,
    else :func:`random_like`). Scores are the summed NLL of the secret tokens given the prefix (and
    the training prompt in chat format when the canary carries one). Ties count against the canary
    (rank = 1 + #alternatives with NLL <= canary's), so a constant model gets exposure ~0.
    """
    if n_alternatives < 1:
        raise ValueError(f"n_alternatives must be >= 1 (got {n_alternatives})")
    rng = np.random.default_rng(seed)
    rows = []
    iterator: Any = canaries
    if progress:
        from tqdm import tqdm

        iterator = tqdm(canaries, desc="canary exposure", unit="canary")
    for raw in iterator:
        can = as_canary(raw)
        context = chat_input_ids(tokenizer, can.prompt, system=DEVICE_SYSTEM) if can.prompt else []
        alts: list[str] = []
        seen = {can.secret}
        tries = 0
        while len(alts) < n_alternatives and tries < n_alternatives * 20:
            tries += 1
            alt = alternatives_fn(raw, rng) if alternatives_fn else random_like(can.secret, rng)
            alt_secret = str(_field(alt, "secret", "value", default=alt)) if not isinstance(alt, str) else alt
            if alt_secret not in seen:
                seen.add(alt_secret)
                alts.append(alt_secret)
        if not alts:
            raise ValueError(f"could not draw alternatives for canary {can.canary_id or can.secret!r}")
        items = [_secret_tokens(tokenizer, context, can.prefix, s) for s in [can.secret, *alts]]
        nll = sequence_nll(model, tokenizer, items, batch_size=batch_size, mean=False)
        rank = 1 + int(np.sum(nll[1:] <= nll[0]))
        n_total = len(alts) + 1
        rows.append(
            {
                "canary_id": can.canary_id,
                "owner": can.owner,
                "rank": rank,
                "n_candidates": n_total,
                "exposure": exposure_from_rank(rank, n_total),
                "max_exposure": math.log2(n_total),
                "canary_nll": float(nll[0]),
                "alternatives_nll_mean": float(np.mean(nll[1:])),
            }
        )
    exposures = [r["exposure"] for r in rows]
    return {
        "per_canary": rows,
        "mean": float(np.mean(exposures)) if rows else float("nan"),
        "max": float(np.max(exposures)) if rows else float("nan"),
        "chance": CHANCE_EXPOSURE,
        "n_alternatives": n_alternatives,
    }


# --------------------------------------------------------------------------- membership inference


def membership_inference(
    model: Any,
    tokenizer: Any,
    members: Sequence[tuple[str, str]],
    non_members: Sequence[tuple[str, str]],
    *,
    reference_model: Any | None = None,
    batch_size: int = 16,
    max_seq_len: int = 256,
    fpr: float = 0.01,
) -> dict[str, Any]:
    """Loss-threshold and reference-calibrated membership inference on (prompt, target) pairs.

    Scores (higher = "member"): ``loss`` attack ``-L_target(x)``; ``reference`` attack
    ``L_ref(x) - L_target(x)`` with ``L_ref`` from ``reference_model`` or, by default, the same PEFT
    model with its adapter disabled (the public base model).
    """
    if not members or not non_members:
        raise ValueError("membership inference needs at least one member and one non-member text")
    mem = encode_pairs(tokenizer, members, max_seq_len)
    non = encode_pairs(tokenizer, non_members, max_seq_len)
    t_mem = sequence_nll(model, tokenizer, mem, batch_size=batch_size)
    t_non = sequence_nll(model, tokenizer, non, batch_size=batch_size)
    if reference_model is None:
        with adapter_disabled(model) as base:
            r_mem = sequence_nll(base, tokenizer, mem, batch_size=batch_size)
            r_non = sequence_nll(base, tokenizer, non, batch_size=batch_size)
    else:
        r_mem = sequence_nll(reference_model, tokenizer, mem, batch_size=batch_size)
        r_non = sequence_nll(reference_model, tokenizer, non, batch_size=batch_size)
    attacks = {
        "loss": (-t_mem, -t_non),
        "reference": (r_mem - t_mem, r_non - t_non),
    }
    out: dict[str, Any] = {"n_members": len(mem), "n_non_members": len(non), "fpr": fpr}
    for name, (sp, sn) in attacks.items():
        out[name] = {"auc": roc_auc(sp, sn), "tpr_at_fpr": tpr_at_fpr(sp, sn, fpr)}
    out["member_loss_mean"] = float(np.mean(t_mem))
    out["non_member_loss_mean"] = float(np.mean(t_non))
    out["auc"] = max(out["loss"]["auc"], out["reference"]["auc"])
    out["tpr_at_1pct_fpr"] = max(out["loss"]["tpr_at_fpr"], out["reference"]["tpr_at_fpr"])
    return out


_WS = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """Lower-case, collapse whitespace (used to de-duplicate member/non-member texts)."""
    return _WS.sub(" ", text.strip().lower())


def split_disjoint(
    members: Sequence[tuple[str, str]], non_members: Sequence[tuple[str, str]]
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Drop non-members whose target text also occurs among members (they would be members)."""
    seen = {normalise_text(t) for _, t in members}
    return list(members), [p for p in non_members if normalise_text(p[1]) not in seen]
