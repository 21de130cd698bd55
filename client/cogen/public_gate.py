"""Train the learned fusion gate without any private text leaving the device.

Why: the gate learns from teacher-forced distributions of both sides on target answers, and the
cloud's side needs the instruction and the answer prefix on the wire. Trained on the user's own
tasks that would stream the user's private answers to the cloud. Here the gate is trained on
**public** examples instead: synthetic tasks of fake users (``fedcogen gate train`` draws them from
the data generator with its own seed), data the cloud may see. The gate's ~300 parameters only learn
*when to trust which side* from summary features of the two distributions, which transfers from
fake users to the real one.

A fake user can still share words with the real one (names come from one pool, texts from shared
templates), so the device screens every public example against its own private texts before
anything is sent: an example whose instruction contains a private value or shares a word 4-gram
with a private text is dropped, and a target is cut before the first private value or shared
4-gram. The screen runs on the device; nothing about the private texts is sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcogen.client.cogen.gate_training import train_gate
from fedcogen.client.cogen.private_spans import context_values
from fedcogen.text_match import normalise

GATE_FILE = "fusion_gate.pt"  # stored inside the adapter folder


@dataclass(frozen=True)
class PrivateScreen:
    """Word n-grams and values of the device's private texts (built and used on the device only)."""

    ngrams: frozenset[tuple[str, ...]]
    values: tuple[tuple[str, ...], ...]
    n: int = 4

    @classmethod
    def from_texts(cls, private_texts: Iterable[str], extra_values: Iterable[str] = (), n: int = 4) -> PrivateScreen:
        texts = list(private_texts)
        grams: set[tuple[str, ...]] = set()
        for text in texts:
            words = normalise(text).split()
            grams.update(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        values = [v for t in texts for v in context_values(t)] + list(extra_values)
        vals = {tuple(normalise(v).split()) for v in values}
        return cls(frozenset(grams), tuple(sorted(v for v in vals if v)), n)

    def first_private_word(self, text: str) -> int | None:
        """Index of the first word that starts a private value or a private n-gram (None: clean)."""
        words = normalise(text).split()
        for i in range(len(words)):
            if tuple(words[i:i + self.n]) in self.ngrams:
                return i
            if any(tuple(words[i:i + len(v)]) == v for v in self.values):
                return i
        return None

    def clean_prefix(self, text: str) -> str:
        """The longest word prefix of ``text`` that holds no private value and no private n-gram."""
        cut = self.first_private_word(text)
        if cut is None:
            return text
        # keep the original spelling: cut after the cut-th word of the raw text, counted like normalise
        out, seen = [], 0
        for raw in text.split():
            n_norm = len(normalise(raw).split())
            if seen + n_norm > cut:
                break
            out.append(raw)
            seen += n_norm
        prefix = " ".join(out)
        return prefix if self.first_private_word(prefix) is None else ""


def screen_examples(examples: Sequence[dict[str, str]], screen: PrivateScreen,
                    min_target_words: int = 4) -> list[dict[str, str]]:
    """Public examples that pass the screen (targets cut before anything private)."""
    kept = []
    for ex in examples:
        if screen.first_private_word(ex["instruction"]) is not None:
            continue
        target = screen.clean_prefix(ex["target"])
        if len(target.split()) >= min_target_words:
            kept.append({**ex, "target": target})
    return kept


def train_public_gate(device: Any, public_examples: Sequence[dict[str, str]], private_texts: Iterable[str],
                      *, extra_values: Iterable[str] = (), epochs: int = 30, lr: float = 0.02,
                      max_target_tokens: int = 48) -> tuple[Any, dict[str, Any]]:
    """Screen ``public_examples`` against ``private_texts`` on the device, then train the gate on them.

    ``public_examples``: dicts with ``instruction``, ``private_context`` (a FAKE user's context: read
    by the device model only) and ``target``. Returns the gate and training stats.
    """
    screened = screen_examples(public_examples, PrivateScreen.from_texts(private_texts, extra_values))
    if not screened:
        raise ValueError("no public example passed the private screen; draw more synthetic tasks")
    gate, stats = train_gate(device, screened, epochs=epochs, lr=lr, max_target_tokens=max_target_tokens)
    return gate, {**stats, "examples_offered": len(public_examples), "examples_used": len(screened)}


def gate_path(adapter_dir: str | Path) -> Path:
    """Where the learned gate lives next to the adapter it was trained with."""
    return Path(adapter_dir) / GATE_FILE
