"""Seeded shared-random supports: the positions an update sends, derived by every party, so none travel.

Why (FedKSeed, Ferret and the shared-random-mask sparsifiers): top-k sends the positions it picked,
``log2 C(n, k)`` bits per tensor at best, about as many bits as int4 values at 2 % density. If instead
every client and the server draw the *same* random positions from public values, nothing but the
values crosses the wire, the server's sum is exact on that support (every client sent the same
positions), and the broadcast of the aggregate can use the same support, again without indices.
The price is that a random support holds fewer of the update's large entries than top-k's; error
feedback keeps what was not sent and sends it once a later round's support covers it.

The seed: ``SeedSequence([run seed, round, stream])``, then per tensor ``(that seed, a hash of the
tensor's name)``. This randomness protects nothing (the support is public by design and independent
of any data), so a reproducible seed is right here; the rule that DP noise comes from the OS CSPRNG
(:func:`fedcogen.protocols.privacy.dp.secret_rng`) is about noise, not about this.

Nesting: a tensor's support of size ``k`` is the first ``k`` positions of one seeded permutation, so a
denser support of the same round contains a sparser one (a broadcast at ``down_density >= density``
carries every aggregated entry). Sizes follow :func:`support_size`, the same rule on every side, and a
receiver that knows the density refuses a record of another size (:class:`SupportRule`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedcogen.protocols.codecs.sparse_format import MAX_ELEMENTS, SparseTensor, sendable_array

SUPPORT_STREAM = 0x5EED5  # keeps these draws apart from every other use of (seed, round)
MAX_SEED = 2**64  # the seed travels as a u64 in every shared-support blob


def round_support_seed(run_seed: int, server_round: int) -> int:
    """The public u64 seed of round ``server_round``'s supports (both directions use it)."""
    if server_round < 0:
        raise ValueError(f"round must be >= 0, got {server_round}")
    state = np.random.SeedSequence([int(run_seed) % MAX_SEED, int(server_round), SUPPORT_STREAM])
    return int(state.generate_state(1, dtype=np.uint64)[0])


def support_size(n: int, density: float) -> int:
    """Entries a tensor of ``n`` sends at ``density``: ``round(density n)``, at least 1, at most ``n``."""
    if not 0 < density <= 1:
        raise ValueError(f"support density must be in (0, 1], got {density!r}")
    return 0 if n <= 0 else max(1, min(n, int(round(density * n))))


def tensor_support(seed: int, name: str, n: int, k: int) -> np.ndarray:
    """Sorted positions of tensor ``name``'s support: the first ``k`` of a permutation of ``range(n)``
    drawn from ``(seed, sha256(name))``. The name's hash, not Python's ``hash``, so every process agrees."""
    if not 0 <= k <= n:
        raise ValueError(f"support of tensor {name!r} needs 0 <= k <= n, got k={k}, n={n}")
    if n > MAX_ELEMENTS:
        raise ValueError(f"tensor {name!r} has {n} entries (max {MAX_ELEMENTS})")
    name_key = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")
    perm = np.random.default_rng([int(seed) % MAX_SEED, name_key]).permutation(n)
    return np.sort(perm[:k]).astype(np.int64)


def shared_sparsify(tensors: Mapping[str, Any], density: float, seed: int) -> dict[str, SparseTensor]:
    """The values of every tensor at its shared support (selection only: values stay float32).

    Unlike top-k, zeros are sent too: every client must send the same positions for the server's sum
    to be exact on them, and the receiver checks the size.
    """
    out: dict[str, SparseTensor] = {}
    for name, t in tensors.items():
        a = sendable_array(name, t)
        flat = a.reshape(-1)
        idx = tensor_support(seed, name, flat.size, support_size(flat.size, density))
        out[name] = SparseTensor(idx, flat[idx].astype(np.float32), tuple(a.shape))
    return out


@dataclass(frozen=True)
class SupportRule:
    """What a receiver expects of a shared-support blob: this round's seed and the density it was sent at.

    A blob for another round (a replayed or stale update), with indices of its own, or with a record of
    another size would not add up exactly with the others on the shared support, so it is refused.
    """

    seed: int
    density: float

    def __post_init__(self) -> None:
        if not 0 <= int(self.seed) < MAX_SEED:
            raise ValueError(f"support seed must be a u64, got {self.seed!r}")
        support_size(1, self.density)  # range check of the density


__all__ = ["SupportRule", "round_support_seed", "support_size", "tensor_support", "shared_sparsify", "MAX_SEED"]
