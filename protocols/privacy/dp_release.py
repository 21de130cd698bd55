"""What a DP client may release, measured on the bytes it sends, and the local guarantee of a release.

Two gaps this closes (see :mod:`fedcogen.protocols.privacy.dp` for the mechanism itself):

* **Quantisation after clipping.** The client clips the float values of its top-k selection to
  L2 norm ``C`` and the codec then rounds them (int8: ``round(v / s) * s`` with ``s = max|v| / 127``
  stored as float32). Rounding can move the *decoded* vector, the one the server aggregates, above
  ``C``, so the sensitivity the accountant assumes would not hold. :func:`encode_within_clip`
  encodes, decodes, measures, and shrinks until the decoded update is within ``C``.
* **Client-side noise without secure aggregation.** In ``dp_mode = "client"`` each client adds
  ``N(0, sigma^2 C^2 / n)`` so that the *sum* of ``n`` updates carries the central noise; that central
  guarantee needs the server to see only the sum (secure aggregation). Without it the server sees
  every noised update, whose own guarantee is a *local* one: one Gaussian release of sensitivity
  ``2C`` (replace-one: the client's update may become any other vector of norm ``<= C``) with noise
  std ``sigma C / sqrt(n)``, composed over the rounds that client took part in, without subsampling
  amplification (the server knows who it sampled). :func:`local_epsilon` is that number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedcogen.protocols.codecs import sparse_codec as codec
from fedcogen.protocols.privacy.dp import rdp_accountant, with_values

SHRINK_TRIES = 30


def decoded_norm(blob: bytes, schema: codec.SchemaLike) -> float:
    """L2 norm of the update the server reconstructs from ``blob`` (after dequantisation)."""
    sq = 0.0
    for st in codec.decode_sparse(blob, schema).values():
        v = np.asarray(st.values, np.float64)
        sq += float(np.dot(v, v))
    return math.sqrt(sq)


def encode_within_clip(sparse: Mapping[str, Any], cfg: codec.CodecConfig, clip_norm: float,
                       schema: codec.SchemaLike | None = None) -> bytes:
    """Encode ``sparse`` so that the *decoded* update has L2 norm ``<= clip_norm``.

    Scaling all values by ``f < 1`` scales the decoded values by about ``f`` too (the int8 scale is
    relative), so a few shrink steps of ``clip / norm`` (with a small margin that grows each try)
    suffice; the loop stops at the first blob within the bound. Raises if none is found, which would
    be a codec bug rather than a property of the data. ``schema`` as in :func:`codec.encode_sparse`.
    """
    if not clip_norm > 0:
        raise ValueError(f"clip_norm must be > 0 (got {clip_norm})")
    current = dict(sparse)
    if schema is None:
        schema = codec.TensorSchema.from_shapes({k: tuple(st.shape) for k, st in current.items()})
    blob = codec.encode_sparse(current, cfg, schema)
    for attempt in range(SHRINK_TRIES):
        norm = decoded_norm(blob, schema)
        if norm <= clip_norm:
            return blob
        factor = (clip_norm / norm) * (1.0 - 1e-6 * 4**attempt)
        current = {k: with_values(st, (np.asarray(st.values, np.float64) * factor).astype(np.float32))
                   for k, st in current.items()}
        blob = codec.encode_sparse(current, cfg, schema)
    raise RuntimeError(f"could not encode the update within the DP clip {clip_norm} "
                       f"(decoded norm {decoded_norm(blob, schema):.6g})")


def local_noise_multiplier(noise_multiplier: float, clients_per_round: int) -> float:
    """Noise std over sensitivity of one client's noised release: ``(sigma C / sqrt(n)) / (2 C)``."""
    if clients_per_round < 1:
        raise ValueError(f"clients_per_round must be >= 1 (got {clients_per_round})")
    return noise_multiplier / (2.0 * math.sqrt(clients_per_round))


def local_epsilon(noise_multiplier: float, clients_per_round: int, participations: int, delta: float) -> float:
    """Per-client epsilon of what a server without secure aggregation sees of one client.

    ``participations`` noised updates of that client, each a Gaussian release with noise multiplier
    :func:`local_noise_multiplier` (no sampling amplification). ``inf`` without noise.
    """
    if participations <= 0:
        return 0.0
    z = local_noise_multiplier(noise_multiplier, clients_per_round)
    if z <= 0:
        return math.inf
    import dp_accounting

    acc = rdp_accountant()
    acc.compose(dp_accounting.GaussianDpEvent(z), int(participations))
    return float(acc.get_epsilon(delta))
