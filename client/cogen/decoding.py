"""Token choice for every CoGenesis variant: repetition control, then greedy or sampled choice.

Why here and not in ``transformers.generate``: the collaborative variants choose each token from a
*fused* distribution (device and cloud) that no HF logits processor sees, so repetition control must
act on whatever distribution is finally used. Every variant goes through :func:`choose`, so the device
alone and the fused variants loop (or not) under the same rules and their repetition figures compare.

Two controls, both on by default because a 135M model's greedy decoding otherwise loops ("I'm here to
help you with your blog post." three times over):

* ``repetition_penalty`` (CTRL, Keskar et al. 2019, as in HF): every token id already generated has its
  log-prob multiplied by the penalty (log-probs are <= 0, so this lowers them), then renormalised.
* ``no_repeat_ngram`` (as HF's ``no_repeat_ngram_size``): a token that would complete an n-gram already
  present in the generated text is banned. 0 turns it off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RepetitionControl:
    """Defaults chosen by measurement on the demo tasks (docs/personalisation.md)."""

    penalty: float = 1.15
    no_repeat_ngram: int = 4

    def __post_init__(self) -> None:
        if self.penalty < 1.0:
            raise ValueError(f"repetition penalty must be >= 1.0 (1.0 = off), got {self.penalty}")
        if self.no_repeat_ngram < 0:
            raise ValueError(f"no-repeat n-gram size must be >= 0 (0 = off), got {self.no_repeat_ngram}")


def banned_tokens(generated: Sequence[int], n: int) -> list[int]:
    """Tokens that would repeat an n-gram of ``generated`` if appended next."""
    if n <= 0 or len(generated) < n:
        return []
    prefix = tuple(generated[len(generated) - n + 1:]) if n > 1 else ()
    out = []
    for i in range(len(generated) - n + 1):
        if tuple(generated[i:i + n - 1]) == prefix:
            out.append(int(generated[i + n - 1]))
    return out


def apply_repetition_control(lp: torch.Tensor, generated: Sequence[int], ctl: RepetitionControl) -> torch.Tensor:
    """A renormalised copy of the log-prob vector ``lp`` ([V]) with the controls applied."""
    if not generated or (ctl.penalty == 1.0 and ctl.no_repeat_ngram == 0):
        return lp
    out = lp.clone()
    if ctl.penalty != 1.0:
        seen = torch.tensor(sorted(set(generated)), dtype=torch.long)
        out[seen] = out[seen] * ctl.penalty
    banned = banned_tokens(generated, ctl.no_repeat_ngram)
    if banned:
        out[torch.tensor(banned, dtype=torch.long)] = float("-inf")
    return torch.log_softmax(out, dim=-1)


def choose(
    lp: torch.Tensor,
    generated: Sequence[int],
    ctl: RepetitionControl,
    *,
    sample: bool = False,
    temperature: float = 1.0,
    rng: torch.Generator | None = None,
) -> int:
    """The next token: greedy (default) or sampled from ``lp`` after repetition control."""
    lp = apply_repetition_control(lp, generated, ctl)
    if sample:
        probs = torch.softmax(lp / max(temperature, 1e-4), dim=-1)
        return int(torch.multinomial(probs, 1, generator=rng))
    return int(lp.argmax())

