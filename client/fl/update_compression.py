"""Update compression on a device: error-feedback top-k (or shared random support), optional DP clip/noise,
sparse encoding.

Library code, callable without Flower: the ClientApp's round (:mod:`fedcogen.client.fl.local_round`)
and the communication benchmark both use it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedcogen.protocols.codecs import sparse_codec as codec
from fedcogen.protocols.privacy import dp
from fedcogen.protocols.privacy.dp_release import encode_within_clip
from fedcogen.run_config import FLSettings


def compress_update(
    update: Mapping[str, np.ndarray],
    residual: Mapping[str, np.ndarray] | None,
    settings: FLSettings,
    rng: np.random.Generator,
    schema: codec.TensorSchema | None = None,
    *,
    server_round: int | None = None,
) -> tuple[bytes, dict[str, np.ndarray]]:
    """Error-feedback top-k (+ DP clip/noise) + encode; returns (blob, new residual).

    With ``support = "random"`` the entries sent are the round's shared random support
    (``server_round`` names it), not the top-k, and the blob carries no indices; what lies off the
    support stays in the residual like anything else top-k would not have sent (``server_round`` is
    required then).

    The residual is ``corrected - decoded(blob)``: what the server will actually see is subtracted,
    so with DP on, no part of the update reaches the server without passing the clip. In client-mode
    DP the added noise is taken back out of that difference (``released - clipped``): the residual
    carries clipping and quantisation leftovers, never the noise, which would otherwise feed back
    into the next round's update with the opposite sign. In server-mode DP the blob is encoded so
    that the update the server *decodes* (after value quantisation) is within the clip norm.
    ``schema`` (default: the update's own tensors) is the adapter schema the server decodes with.
    """
    if schema is None:
        schema = codec.TensorSchema.from_shapes({k: np.shape(v) for k, v in update.items()})
    if settings.support == "random" and server_round is None:
        raise ValueError("compress_update with support 'random' needs server_round (it names the shared support)")
    cfg = codec.CodecConfig(
        density=settings.density, scope=settings.scope, quant=settings.quant, index_coding=settings.index_coding,
        shared_seed=None if server_round is None else settings.support_seed(server_round),
    )
    corrected = {k: np.asarray(v, np.float32) + (residual[k] if residual and k in residual else 0.0)
                 for k, v in update.items()}
    corrected = {k: np.asarray(v, np.float32) for k, v in corrected.items()}
    sparse = codec.sparsify(corrected, cfg)
    if settings.dp_mode != "none":
        dpc = dp.DPConfig(mode=settings.dp_mode, clip_norm=settings.dp_clip_norm,
                          noise_multiplier=settings.dp_noise_multiplier, delta=settings.dp_delta,
                          clients_per_round=max(1, settings.clients_per_round))
        released, clipped = dp.privatize_sparse_split(sparse, dpc, rng)
        released_dense, clipped_dense = codec.densify(released), codec.densify(clipped)
        noise = {k: released_dense[k] - clipped_dense[k] for k in released_dense}
        sparse = released
    else:
        noise = {}
    if settings.dp_mode == "server":
        blob = encode_within_clip(sparse, cfg, settings.dp_clip_norm, schema)
    else:
        blob = codec.encode_sparse(sparse, cfg, schema)
    sent = codec.densify(codec.decode_sparse(blob, schema))
    new_residual = {k: (corrected[k] - sent.get(k, 0.0) + noise.get(k, 0.0)).astype(np.float32)
                    for k in corrected}
    return blob, new_residual
