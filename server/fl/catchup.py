"""Which broadcast deltas the server keeps for catch-up chains (see :mod:`fedcogen.protocols.codecs.patch_chain`).

Why a bound: a chain re-sends every delta a client missed, so it only pays for clients a few
versions behind; keeping the last ``KEEP`` deltas bounds the server's memory and checkpoint, and
clients further behind (or new ones, when version 1 is gone) get the lossless overwrite patch.
"""

from __future__ import annotations

KEEP = 32


def keep_delta(deltas: dict[int, bytes], version: int, blob: bytes, keep: int = KEEP) -> None:
    deltas[version] = bytes(blob)
    for old in sorted(deltas)[:-keep]:
        del deltas[old]


def chain_size(deltas: dict[int, bytes], base: int, cur: int) -> int | None:
    """Bytes of the chain from version ``base`` to ``cur`` (None if a delta is no longer kept)."""
    if cur <= base or any(v not in deltas for v in range(base + 1, cur + 1)):
        return None
    return sum(len(deltas[v]) for v in range(base + 1, cur + 1))
