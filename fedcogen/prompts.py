"""Prompt formats used on the device and sent to the cloud.

One module so that training (federated LoRA), generation (CoGenesis variants) and evaluation
format prompts identically. The split is the privacy boundary: ``cloud_*`` functions take only
the bare instruction (they have no parameter for private context, by construction), while
``device_*`` functions combine instruction, private context and an optional cloud sketch.
"""

from __future__ import annotations

import re
from collections.abc import Callable

DEVICE_SYSTEM = (
    "You are the user's personal writing assistant running on their own device. "
    "Use the private context to personalise the text and write in the user's style."
)
CLOUD_SYSTEM = "You are a helpful writing assistant."
SKETCH_SYSTEM = (
    "You write short outlines. Given a writing instruction, list 3 to 5 key points the text "
    "should cover, one per line, without inventing personal details."
)


def cloud_prompt(instruction: str) -> str:
    """What the cloud model is conditioned on when it writes or scores tokens: the instruction only."""
    return instruction.strip()


def sketch_request(instruction: str) -> str:
    """The text the cloud turns into a sketch (outline); the instruction only."""
    return f"Instruction: {instruction.strip()}\nWrite the outline."


def device_prompt(instruction: str, private_context: str, sketch: str | None = None) -> str:
    """What the device model is conditioned on: private context + instruction (+ cloud sketch)."""
    parts = [f"Private context:\n{private_context.strip()}", f"Instruction: {instruction.strip()}"]
    if sketch:
        parts.append(f"Outline from the cloud assistant:\n{sketch.strip()}")
    return "\n\n".join(parts)


def history_prompt(kind: str) -> str:
    """Prompt paired with a past text from the user's private history during training."""
    return f"Write a {kind} in my usual style."


def fit_context(private_context: str, count_tokens: Callable[[str], int], max_tokens: int) -> str:
    """The private context, shrunk until ``count_tokens(context)`` (the whole prompt's length) fits.

    What matters is kept: the first block (blank-line separated; the profile in our format) and the
    newest blocks; the oldest history (the blocks right after the first) goes first. If the first
    block alone is too long, its end is cut word by word. The instruction is never touched: it is
    not part of the context.
    """
    if count_tokens(private_context) <= max_tokens:
        return private_context
    blocks = [b.strip() for b in re.split(r"\n\s*\n", private_context.strip()) if b.strip()]
    head, kept = blocks[0], []
    for block in reversed(blocks[1:]):  # newest first
        if count_tokens("\n\n".join([head, block, *kept])) > max_tokens:
            break
        kept.insert(0, block)
    text = "\n\n".join([head, *kept])
    if count_tokens(text) <= max_tokens:
        return text
    words = head.split(" ")
    lo, hi = 0, len(words)  # binary search for the most words of the head that fit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(" ".join(words[:mid])) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])
