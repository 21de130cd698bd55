"""Secure aggregation (SecAgg+) for *sparse* LoRA updates via a shared random support.

Problem: SecAgg+ (Bell et al. 2020; Flower's ``SecAggPlusWorkflow`` + ``secaggplus_mod``) sums
*equal-length dense* integer vectors under pairwise masks. Top-k sparsification picks different
positions on every client, so the masked vectors cannot be summed position-wise, and sending the
positions in the clear would leak which coordinates each client changed most (data-dependent).

Scheme (shared-random-mask sparsification): every round the server publishes a fresh seed in the
fit config. Every client derives the same pseudo-random support ``S`` (``k`` positions of the
flattened adapter) from it with :func:`shared_support`, adds its error-feedback residual to its
update, clips (and in client-mode DP, noises) the ``k`` values at ``S`` and sends just those ``k``
values through SecAgg+ as a dense length-``k`` vector. The server learns only the masked vectors
and, after unmasking, the *mean* over clients at ``S``; ``S`` itself is public and independent of
any data. Coordinates outside ``S`` stay in each client's residual and are sent in a later round
(error feedback), so nothing is lost in the long run; per round it is "random-k" instead of "top-k",
which converges more slowly per byte but is what secure summation allows.

Trust model: the server is honest-but-curious (follows the protocol, tries to learn from what it
sees); at least ``n - t`` of the ``n`` sampled clients are honest and do not collude with it
(``t`` = SecAgg+ reconstruction threshold margin). Under that model the server sees only the sum.
With ``DPConfig(mode="client")`` each client adds ``N(0, sigma^2 C^2 / n)`` to its ``k`` values, so
the released sum carries ``N(0, sigma^2 C^2)`` (see :mod:`fedcogen.protocols.privacy.dp`). The support is
public and reproducible from the round seed; the noise is not: it is drawn from
:func:`fedcogen.protocols.privacy.dp.secret_rng` (OS CSPRNG), since the server holds the seed and could
otherwise strip every client's noise from the unmasked sum.

SecAgg+ specifics: Flower's mod quantises each value after clipping it to
``[-clipping_range, clipping_range]`` into ``quantization_range`` levels with stochastic rounding,
and multiplies by ``num_examples / max_weight`` first. We report ``num_examples=1`` and set
``max_weight=1`` so that the unmasked result is the plain mean with quantisation error about
``2 * clipping_range / quantization_range`` per client.

The federated LoRA run itself uses this scheme with ``secagg = "secaggplus"`` (:func:`round_support`,
:func:`release_at_support`; :mod:`fedcogen.client.fl.secagg_train`, :mod:`fedcogen.server.fl.secagg_round`).
The stand-alone experiment's Flower apps live in :mod:`fedcogen.simulations.privacy.secagg_client` and :mod:`fedcogen.simulations.privacy.secagg_server`;
:mod:`fedcogen.simulations.privacy.secagg_experiment` runs them. The experiment uses Flower's legacy server path (``LegacyContext`` + ``DefaultWorkflow(fit_workflow=
SecAggPlusWorkflow(...))``) and a legacy ``NumPyClient`` behind ``secaggplus_mod`` in the simulation
engine, in three modes for comparison: ``sparse`` (this scheme), ``dense`` (SecAgg+ over the whole
adapter vector) and ``plain`` (top-k sparse codec blobs without SecAgg, the non-secure baseline).
Every message crossing the server's grid is serialized with Flower's serde to count bytes, and
the masked vectors the server receives are kept for inspection (tests check they reveal nothing).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fedcogen.protocols.privacy.dp import DPConfig, client_noise_std, clip_dense, secret_rng
from fedcogen.run_config import NOISE_HEADROOM, FLSettings

MODES = ("sparse", "dense", "plain")


SECAGG_RUN = FLSettings(num_clients=4, clients_per_round=4, rounds=2, density=0.05, local_steps=2, lr=5e-3)


@dataclass
class SecAggRunConfig:
    """One secure-aggregation simulation.

    ``run.density`` = k / dim. ``update="synthetic"`` draws deterministic pseudo-random client updates
    of length ``dim`` (protocol tests and byte/time benchmarks); ``update="lora"`` trains the real
    LoRA adapter of ``run.model`` on each user's data from ``run.data_dir`` for ``run.local_steps`` steps.
    """

    mode: str = "sparse"
    # clients (all of them every round), rounds, density, seed, model/data/local training and DP of the run
    run: FLSettings = field(default_factory=lambda: SECAGG_RUN)
    dim: int = 4096
    update: str = "synthetic"
    num_shares: float = 1.0
    reconstruction_threshold: float = 0.6
    clipping_range: float = 4.0
    quantization_range: int = 2**22
    modulus_range: int = 2**32
    num_cpus: int = 2

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"secagg mode must be one of {MODES}, got {self.mode!r}")
        if self.run.num_clients < 2 and self.mode != "plain":
            raise ValueError("SecAgg+ needs at least 2 clients per round")
        if self.update not in ("synthetic", "lora"):
            raise ValueError(f"update must be 'synthetic' or 'lora', got {self.update!r}")
        if self.run.dp_mode not in ("none", "client"):
            raise ValueError("with secure aggregation only dp_mode 'none' or 'client' (distributed noise) apply")
        if self.update == "lora" and not self.run.data_dir:
            raise ValueError("update='lora' needs data_dir (a generated federation)")

    @property
    def k(self) -> int:
        return max(1, int(round(self.run.density * self.dim)))

    def dp(self) -> DPConfig:
        return DPConfig(mode=self.run.dp_mode, clip_norm=self.run.dp_clip_norm,
                        noise_multiplier=self.run.dp_noise_multiplier, clients_per_round=self.run.num_clients)

    def with_run(self, **changes: Any) -> SecAggRunConfig:
        """A copy with some run settings changed (``rounds=1``, ``density=0.1`` ...)."""
        return replace(self, run=self.run.replace(**changes))


def shared_support(seed: int, dim: int, k: int) -> np.ndarray:
    """The public support of a round: ``k`` distinct positions of ``[0, dim)`` drawn from ``seed``."""
    if not 0 < k <= dim:
        raise ValueError(f"need 0 < k <= dim (k={k}, dim={dim})")
    return np.sort(np.random.default_rng([int(seed), 0x5EC]).choice(dim, size=k, replace=False)).astype(np.int64)


def round_seed(base_seed: int, server_round: int) -> int:
    """The seed the server publishes for ``server_round`` (any public value works; this is reproducible)."""
    return int(np.random.default_rng([int(base_seed), int(server_round), 0xA66]).integers(2**31 - 1))


def secure_values(
    corrected: np.ndarray, support: np.ndarray, dp: DPConfig, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Values a client feeds into SecAgg+ and its new residual.

    Clip the ``k`` values at the support (DP sensitivity), add the client's share of noise in
    ``client`` mode; the residual keeps everything that was not released: ``corrected`` minus the
    clipped values at the support (noise is not fed back into error feedback). ``rng`` defaults to
    the secret generator (never pass one seeded from public values outside tests).
    """
    vals = corrected[support].astype(np.float32)
    if dp.mode != "none":
        clipped, _ = clip_dense({"v": vals}, dp.clip_norm)
        vals = clipped["v"]
    residual = corrected.copy()
    residual[support] -= vals
    if dp.mode == "client" and dp.noise_multiplier > 0:
        vals = vals + (rng or secret_rng()).normal(0, client_noise_std(dp), vals.shape).astype(np.float32)
    return vals.astype(np.float32), residual.astype(np.float32)


# --------------------------------------------------------------------------- the real adapter path


def flat_offsets(shapes: Mapping[str, tuple[int, ...]]) -> list[tuple[str, int, int]]:
    """``(name, start, end)`` of each tensor in the flat adapter vector (names sorted: both sides agree)."""
    out, pos = [], 0
    for name in sorted(shapes):
        n = int(np.prod(shapes[name]))
        out.append((name, pos, pos + n))
        pos += n
    return out


def flatten(adapter: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(adapter[k], np.float32).reshape(-1) for k in sorted(adapter)])


def unflatten(flat: np.ndarray, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    return {name: np.asarray(flat[a:b], np.float32).reshape(shapes[name]) for name, a, b in flat_offsets(shapes)}


def round_support(settings: FLSettings, server_round: int, dim: int) -> np.ndarray:
    """The public support of a round of the federated run: ``density * dim`` positions from (seed, round)."""
    k = max(1, min(dim, int(round(settings.density * dim))))
    return shared_support(round_seed(settings.seed, server_round), dim, k)


def release_at_support(
    corrected: np.ndarray, support: np.ndarray, settings: FLSettings, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Values a client releases at the shared support, and its new residual (flat vectors).

    DP clip (L2, to ``dp_clip_norm``) first, then each value clipped to ``+-secagg_range`` (SecAgg+
    would clip it anyway, silently): both excesses stay in the residual, so error feedback sends them
    later. In client-mode DP the client's share of noise is added last and never fed back; the value
    clip then leaves ``NOISE_HEADROOM`` noise standard deviations of room below the range, so SecAgg+
    does not clip the noise (a clipped Gaussian would not carry the guarantee the accountant reports).
    ``rng`` defaults to the secret generator (:func:`fedcogen.protocols.privacy.dp.secret_rng`).
    """
    vals = corrected[support].astype(np.float32)
    if settings.dp_mode != "none":
        vals = clip_dense({"v": vals}, settings.dp_clip_norm)[0]["v"]
    std = 0.0
    if settings.dp_mode == "client" and settings.dp_noise_multiplier > 0:
        std = client_noise_std(DPConfig(mode="client", clip_norm=settings.dp_clip_norm,
                                        noise_multiplier=settings.dp_noise_multiplier,
                                        clients_per_round=max(1, settings.clients_per_round)))
    head = settings.secagg_range - NOISE_HEADROOM * std  # > 0: FLSettings.validate refuses less room
    vals = np.clip(vals, -head, head).astype(np.float32)
    residual = corrected.astype(np.float32, copy=True)
    residual[support] -= vals
    if std > 0:
        vals = vals + (rng or secret_rng()).normal(0, std, vals.shape).astype(np.float32)
    return vals.astype(np.float32), residual
