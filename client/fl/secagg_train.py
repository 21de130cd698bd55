"""The client's side of secure aggregation in the federated LoRA run (``secagg`` run setting).

With ``secagg = "secaggplus"`` a round's train message arrives through Flower's SecAgg+ protocol
(``secaggplus_mod``: key setup, share exchange, masked upload, unmasking). When the mod reaches the
upload stage it calls our train handler, which trains as usual and releases the values of its
corrected update (update + error-feedback residual) at the round's *shared random support* (public,
data-independent: :func:`fedcogen.secagg.round_support`), as a legacy ``FitRes`` the mod then masks.
Clipping (DP clip and SecAgg+'s value range) happens here, so the excess stays in the residual
instead of being lost in SecAgg+'s own clipping. The download is the usual sparse broadcast patch,
carried in the ``FitIns`` config. ``secagg = "plain"`` releases the same values as an ordinary
sparse blob in the clear: the baseline that shows what SecAgg+ costs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from fedcogen.protocols import fl_messages as fm
from fedcogen.protocols.codecs import sparse_codec as codec
from fedcogen.protocols.privacy.dp_release import encode_within_clip
from fedcogen.run_config import FLSettings
from fedcogen.secagg import flat_offsets, flatten, release_at_support, round_support, unflatten

FITINS_CONFIG = "fitins.config"  # where Flower's compat layer puts a FitIns config


def optional_secaggplus_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """SecAgg+ for the train messages that speak it; every other message passes straight through."""
    if msg.metadata.message_type == MessageType.TRAIN and RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


def config_key(content: Any) -> str:
    """The config record of a train/evaluate message: ours, or the FitIns config under SecAgg+."""
    return FITINS_CONFIG if FITINS_CONFIG in content.config_records else fm.CONFIG


def shared_release(
    update: Mapping[str, np.ndarray], residual: Mapping[str, np.ndarray] | None, settings: FLSettings,
    server_round: int, rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """``(values at the support, support, new residual)`` of this round's corrected update."""
    shapes = {k: tuple(np.shape(v)) for k, v in update.items()}
    corrected = flatten(update) + (flatten(residual) if residual else 0.0)
    support = round_support(settings, server_round, corrected.size)
    values, new_residual = release_at_support(corrected.astype(np.float32), support, settings, rng)
    return values, support, unflatten(new_residual, shapes)


def plain_release(values: np.ndarray, support: np.ndarray, shapes: Mapping[str, tuple[int, ...]],
                  settings: FLSettings, residual: Mapping[str, np.ndarray]) -> tuple[bytes, dict[str, np.ndarray]]:
    """``secagg = "plain"`` (the baseline in the clear): the released values as an ordinary sparse blob, and
    the residual with what the blob's quantisation (and DP shrink) did not send added back at the support."""
    blob = plain_blob(values, support, shapes, settings)
    sent = flatten({**{k: np.zeros(s, np.float32) for k, s in shapes.items()},
                    **codec.densify(codec.decode_sparse(blob, shapes))})
    flat = flatten(residual)
    flat[support] += values - sent[support]
    return blob, unflatten(flat, shapes)


def plain_blob(values: np.ndarray, support: np.ndarray, shapes: Mapping[str, tuple[int, ...]],
               settings: FLSettings) -> bytes:
    """The released values at the shared support as an ordinary sparse blob."""
    sparse = {}
    for name, a, b in flat_offsets(shapes):
        sel = (support >= a) & (support < b)
        sparse[name] = codec.SparseTensor((support[sel] - a).astype(np.int64), values[sel], tuple(shapes[name]))
    cfg = codec.CodecConfig(density=1.0, quant=settings.quant, index_coding=settings.index_coding)
    if settings.dp_mode == "server":  # the server checks the decoded norm against C
        return encode_within_clip(sparse, cfg, settings.dp_clip_norm, shapes)
    return codec.encode_sparse(sparse, cfg, shapes)


def fitres_reply(msg: Message, values: np.ndarray, metrics: Mapping[str, Any]) -> Message:
    """The upload SecAgg+ masks: one float vector, weight 1 (the mean is uniform), our metrics."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat

    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([np.asarray(values, np.float32)]), 1,
                    {k: v for k, v in metrics.items() if isinstance(v, int | float | str)})
    return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)
