"""Differential privacy for federated sparse LoRA: clipping, Gaussian noise and an RDP accountant.

Unit of privacy: one *client* (user-level DP, McMahan et al. 2018 "DP-FedAvg"). Neighbouring
federations differ by adding or removing one client's whole data; every round a client takes part
in releases one message, so bounding that message's norm bounds the sensitivity of the round.

Where clipping happens and why residuals are safe
--------------------------------------------------
The client computes ``corrected = update + residual`` (error feedback), selects the top-k entries of
``corrected`` and calls :func:`privatize_sparse` on that selection **before encoding**. Clipping
scales the whole selected vector (all tensors together) to L2 norm ``<= clip_norm``. The caller then
sets ``residual = corrected - sent`` where ``sent`` is what was actually released. The residual is
never released itself: it only changes *later* messages, each of which is again clipped to ``C``
before it leaves the device. So every released message has norm ``<= C`` whatever the residual
holds, which is all the Gaussian mechanism's sensitivity argument needs (the residual is internal
state of the client's randomised algorithm, like an optimiser's momentum).

Two noise placements (``DPConfig.mode``)
----------------------------------------
* ``"server"`` (trusted aggregator, central DP): clients only clip; :func:`server_noise` adds
  ``N(0, (sigma*C/n)^2)`` to *every* coordinate of the averaged update (noise ``sigma*C`` on the sum
  of ``n`` clipped updates, divided by ``n``). Noise is added densely: adding it only at the
  coordinates some client sent would reveal the union of supports.
* ``"client"`` (distributed DP, for use with secure aggregation): every client adds
  ``N(0, sigma^2 C^2 / n)`` (std ``sigma*C/sqrt(n)``) to its sent values, where ``n`` is the number
  of clients summed per round. The sum of ``n`` such shares carries exactly ``N(0, sigma^2 C^2)``,
  the same as central DP, but only if the server sees nothing but the sum: this is what
  :mod:`fedcogen.secagg` provides (SecAgg+ with a shared, data-independent random
  support, so neither values nor positions of a single client are visible). Trust model: the
  server is honest-but-curious, and at least ``n - t`` of the clients in a round are honest (they
  add their share of noise and do not collude with the server, ``t`` being SecAgg+'s reconstruction
  threshold margin). If fewer clients survive than ``n``, the sum carries less noise than planned;
  set ``clients_per_round`` to the minimum number expected to reach aggregation.
  Caveat: without SecAgg and with client-chosen top-k, the *positions* of a client's top-k entries
  are data-dependent and are released in the clear; they are not covered by the guarantee. Use
  the shared random support (fedcogen.secagg) or server mode with dense noise for a formal claim.

Secret randomness (:func:`secret_rng`)
--------------------------------------
The noise only protects if nobody can rebuild it. Every generator that draws DP noise, and the
training sample whose secrecy the accountant's subsampling amplification relies on, comes from
:func:`secret_rng`: a fresh generator seeded with 128 bits from the operating system's CSPRNG
(:mod:`secrets`) at the moment of the draw, never derived from the run seed and never written to a
checkpoint, metric, log or message. The run seed keeps driving data, initialisation, training and
every other random choice, so runs without DP stay bit-reproducible; runs with DP do not (two runs
with the same seed end with different adapters), which is the point.

Accounting
----------
:class:`DPAccountant` wraps ``dp_accounting.rdp.RdpAccountant``: each round composes
``PoissonSampledDpEvent(q, GaussianDpEvent(sigma))`` with ``q = clients_per_round / num_clients``.
Flower samples a fixed number of clients without replacement; Poisson sampling at the same rate is
the standard approximation used by DP-FedAvg implementations (TF-Privacy, Opacus). Amplification
assumes the adversary does not know who took part: the caller passes ``q`` only where the sample is
secret (drawn with :func:`secret_rng`, not named in released outputs), and ``q = 1`` where the
adversary knows it (the server under SecAgg+: :mod:`fedcogen.server.fl.dp_guard`).
``target_epsilon``: :func:`check_budget` refuses a run whose planned rounds already exceed the
target, and :meth:`DPAccountant.would_exceed` lets the driver stop before a round that would.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

DP_MODES = ("none", "client", "server")
SECRET_SEED_BITS = 128
NOISE_SOURCE = "os-csprng"  # named in the resume fingerprint and the dp report


def secret_rng() -> np.random.Generator:
    """A generator for privacy randomness (DP noise, the DP training sample), seeded from the OS CSPRNG.

    Why not the run seed: the seed travels in the run config every client receives and in the
    checkpoint, so noise drawn from it can be recomputed and subtracted (epsilon would be infinite).
    Why not :func:`secrets` for every value: numpy's Gaussian sampler needs a bit generator; PCG64 is
    not a CSPRNG itself, so each call starts a new one from fresh 128-bit OS entropy and the caller
    uses it for one release only (an adversary would have to recover a PCG64 state from outputs
    that are hidden under the signal they protect). The seed is never stored or returned.
    """
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(secrets.randbits(SECRET_SEED_BITS))))



@dataclass
class DPConfig:
    """Differential-privacy settings of a federation.

    ``clip_norm`` is the L2 bound ``C`` on each released client message, ``noise_multiplier`` is
    ``sigma`` (noise std on the *sum* is ``sigma*C``), ``delta`` the target delta,
    ``target_epsilon`` an optional budget (run refused up front / stopped early if exceeded) and
    ``clients_per_round`` the ``n`` used to split noise among clients in ``client`` mode.
    """

    mode: str = "none"
    clip_norm: float = 1.0
    noise_multiplier: float = 0.0
    delta: float = 1e-5
    target_epsilon: float | None = None
    clients_per_round: int = 1

    def __post_init__(self) -> None:
        if self.mode not in DP_MODES:
            raise ValueError(f"dp mode must be one of {DP_MODES}, got {self.mode!r}")
        if self.mode != "none" and not self.clip_norm > 0:
            raise ValueError(f"dp clip_norm must be > 0 (got {self.clip_norm})")
        if self.noise_multiplier < 0:
            raise ValueError(f"dp noise_multiplier must be >= 0 (got {self.noise_multiplier})")
        if not 0 < self.delta < 1:
            raise ValueError(f"dp delta must be in (0, 1) (got {self.delta})")
        if self.target_epsilon is not None and not self.target_epsilon > 0:
            raise ValueError(f"target_epsilon must be > 0 (got {self.target_epsilon})")
        if self.clients_per_round < 1:
            raise ValueError(f"clients_per_round must be >= 1 (got {self.clients_per_round})")

    @property
    def enabled(self) -> bool:
        return self.mode != "none"


# --------------------------------------------------------------------------- building blocks


def global_norm(tensors: Mapping[str, np.ndarray]) -> float:
    """L2 norm of all tensors taken together as one flat vector."""
    total = 0.0
    for value in tensors.values():
        arr = np.asarray(value, dtype=np.float64)
        total += float(np.dot(arr.ravel(), arr.ravel()))
    return math.sqrt(total)


def clip_dense(tensors: Mapping[str, np.ndarray], clip_norm: float) -> tuple[dict[str, np.ndarray], float]:
    """Scale all tensors together so their joint L2 norm is ``<= clip_norm``.

    Returns ``(clipped, original_norm)``. Scaling (not per-coordinate clamping) keeps the update's
    direction, which is what DP-FedAvg uses.
    """
    if not clip_norm > 0:
        raise ValueError(f"clip_norm must be > 0 (got {clip_norm})")
    norm = global_norm(tensors)
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    clipped = {k: (np.asarray(v) * scale).astype(np.asarray(v).dtype, copy=False) for k, v in tensors.items()}
    return clipped, norm


def gaussian_noise_like(
    tensors: Mapping[str, np.ndarray], std: float, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Independent ``N(0, std^2)`` noise with the shape and dtype of each tensor."""
    if std < 0:
        raise ValueError(f"noise std must be >= 0 (got {std})")
    out = {}
    for k, v in tensors.items():
        arr = np.asarray(v)
        dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float32
        out[k] = rng.normal(0.0, std, size=arr.shape).astype(dtype) if std > 0 else np.zeros(arr.shape, dtype)
    return out


def client_noise_std(cfg: DPConfig, n_per_round: int | None = None) -> float:
    """Per-client noise std in ``client`` mode: ``sigma*C/sqrt(n)`` so the sum of n shares has ``sigma*C``."""
    n = int(n_per_round or cfg.clients_per_round)
    if n < 1:
        raise ValueError(f"n_per_round must be >= 1 (got {n})")
    return cfg.noise_multiplier * cfg.clip_norm / math.sqrt(n)


def server_noise_std(cfg: DPConfig, n_clients: int) -> float:
    """Noise std on the *mean* in ``server`` mode: ``sigma*C/n``."""
    if n_clients < 1:
        raise ValueError(f"n_clients must be >= 1 (got {n_clients})")
    return cfg.noise_multiplier * cfg.clip_norm / n_clients


def with_values(sparse: Any, values: np.ndarray) -> Any:
    """A copy of a SparseTensor-like object (dataclass or namedtuple) with new values."""
    if dataclasses.is_dataclass(sparse):
        return dataclasses.replace(sparse, values=values)
    if hasattr(sparse, "_replace"):
        return sparse._replace(values=values)
    return type(sparse)(sparse.indices, values, sparse.shape)


def privatize_sparse(
    sparse: Mapping[str, Any],
    cfg: DPConfig,
    rng: np.random.Generator | None = None,
    n_per_round: int | None = None,
) -> dict[str, Any]:
    """Clip (and in ``client`` mode noise) the values a client is about to send.

    ``sparse`` maps tensor names to SparseTensor(indices, values, shape) objects holding the top-k
    selection of ``update + residual``. All values together are scaled to L2 norm ``<= clip_norm``;
    in ``client`` mode each value then gets ``N(0, sigma^2 C^2 / n)`` noise with
    ``n = n_per_round or cfg.clients_per_round``. Indices and shapes are untouched. Mode ``none``
    returns the input unchanged. The residual may be computed from the returned values (private
    either way); :func:`privatize_sparse_split` also returns the clipped values before noise, which
    is the better residual base in ``client`` mode (the noise is then not fed back into the next
    round's error feedback, where it would accumulate and be clipped away with the signal).
    ``rng`` defaults to :func:`secret_rng` (pass one only in tests of the arithmetic).
    """
    return privatize_sparse_split(sparse, cfg, rng, n_per_round)[0]


def privatize_sparse_split(
    sparse: Mapping[str, Any],
    cfg: DPConfig,
    rng: np.random.Generator | None = None,
    n_per_round: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(released, clipped)``: what to send, and the same selection clipped but not noised."""
    if cfg.mode == "none":
        return dict(sparse), dict(sparse)
    values = {k: np.asarray(st.values) for k, st in sparse.items()}
    clipped, _ = clip_dense(values, cfg.clip_norm)
    released = clipped
    if cfg.mode == "client" and cfg.noise_multiplier > 0:
        noise = gaussian_noise_like(clipped, client_noise_std(cfg, n_per_round), rng or secret_rng())
        released = {k: (clipped[k] + noise[k]).astype(clipped[k].dtype, copy=False) for k in clipped}
    return (
        {k: with_values(st, released[k]) for k, st in sparse.items()},
        {k: with_values(st, clipped[k]) for k, st in sparse.items()},
    )


def server_noise(
    mean_update: Mapping[str, np.ndarray], cfg: DPConfig, n_clients: int, rng: np.random.Generator | None = None
) -> dict[str, np.ndarray]:
    """Central DP: add ``N(0, (sigma*C/n)^2)`` densely to every coordinate of the averaged update.

    Only acts in ``server`` mode (returns a copy otherwise). ``n_clients`` is the number of clipped
    updates that were averaged (use the planned number when dividing by a fixed denominator).
    ``rng`` defaults to :func:`secret_rng` (pass one only in tests of the arithmetic).
    """
    out = {k: np.array(v, copy=True) for k, v in mean_update.items()}
    if cfg.mode != "server" or cfg.noise_multiplier == 0:
        return out
    noise = gaussian_noise_like(out, server_noise_std(cfg, n_clients), rng or secret_rng())
    return {k: (out[k] + noise[k]).astype(out[k].dtype, copy=False) for k in out}


# --------------------------------------------------------------------------- accounting


def rdp_accountant() -> Any:
    import dp_accounting

    # The library logs a warning per non-converging fractional order; those orders are simply skipped.
    logging.getLogger("absl").setLevel(logging.ERROR)
    return dp_accounting.rdp.RdpAccountant()


def _round_event(noise_multiplier: float, sample_rate: float) -> Any:
    import dp_accounting

    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1] (got {sample_rate})")
    return dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier))


def epsilon_for(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """Epsilon after ``rounds`` Poisson-subsampled Gaussian rounds (RDP); ``inf`` without noise."""
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    acc = rdp_accountant()
    acc.compose(_round_event(noise_multiplier, sample_rate), int(rounds))
    return float(acc.get_epsilon(delta))


def max_rounds_for(
    target_epsilon: float, noise_multiplier: float, sample_rate: float, delta: float, limit: int = 100_000
) -> int:
    """Largest number of rounds whose epsilon stays ``<= target_epsilon`` (0 if even one exceeds)."""
    if noise_multiplier <= 0:
        return 0
    if epsilon_for(noise_multiplier, sample_rate, 1, delta) > target_epsilon:
        return 0
    lo, hi = 1, 2
    while hi <= limit and epsilon_for(noise_multiplier, sample_rate, hi, delta) <= target_epsilon:
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if epsilon_for(noise_multiplier, sample_rate, mid, delta) <= target_epsilon:
            lo = mid
        else:
            hi = mid
    return lo


def noise_for_epsilon(
    target_epsilon: float, sample_rate: float, rounds: int, delta: float, tol: float = 1e-3
) -> float:
    """Smallest noise multiplier reaching ``target_epsilon`` after ``rounds`` rounds (bisection)."""
    lo, hi = 0.0, 1.0
    while epsilon_for(hi, sample_rate, rounds, delta) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise ValueError(f"no noise multiplier below 1e4 reaches epsilon {target_epsilon}")
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if epsilon_for(mid, sample_rate, rounds, delta) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi


def check_budget(cfg: DPConfig, sample_rate: float, rounds: int) -> float:
    """Refuse a run up front if its planned rounds exceed ``cfg.target_epsilon``; return planned epsilon."""
    planned = epsilon_for(cfg.noise_multiplier, sample_rate, rounds, cfg.delta) if cfg.enabled else math.inf
    if cfg.target_epsilon is None:
        return planned
    if not cfg.enabled:
        raise ValueError(
            f"target_epsilon={cfg.target_epsilon} needs DP: set dp mode to 'client' or 'server' "
            f"with a noise multiplier > 0"
        )
    if planned > cfg.target_epsilon:
        allowed = max_rounds_for(cfg.target_epsilon, cfg.noise_multiplier, sample_rate, cfg.delta)
        raise ValueError(
            f"planned {rounds} rounds at noise multiplier {cfg.noise_multiplier} and sample rate "
            f"{sample_rate:.3g} give epsilon {planned:.3g} > target {cfg.target_epsilon} at delta "
            f"{cfg.delta}: use at most {allowed} rounds or a noise multiplier >= "
            f"{noise_for_epsilon(cfg.target_epsilon, sample_rate, rounds, cfg.delta):.3f}"
        )
    return planned


class DPAccountant:
    """Running RDP accountant of a federation (one step per aggregated round)."""

    def __init__(self, cfg: DPConfig) -> None:
        self.cfg = cfg
        self._acc = rdp_accountant()
        self.rounds = 0

    def step(self, sample_rate: float, n: int = 1) -> float:
        """Account for ``n`` rounds at client sampling rate ``sample_rate``; returns the new epsilon."""
        if n < 0:
            raise ValueError(f"n must be >= 0 (got {n})")
        if n and self.cfg.enabled and self.cfg.noise_multiplier > 0:
            self._acc.compose(_round_event(self.cfg.noise_multiplier, sample_rate), int(n))
        self.rounds += int(n)
        return self.epsilon()

    def epsilon(self, delta: float | None = None) -> float:
        """Epsilon spent so far at ``delta`` (default ``cfg.delta``); ``inf`` if rounds ran without noise."""
        if self.rounds == 0:
            return 0.0
        if not self.cfg.enabled or self.cfg.noise_multiplier <= 0:
            return math.inf
        return float(self._acc.get_epsilon(delta if delta is not None else self.cfg.delta))

    def would_exceed(self, target: float | None, sample_rate: float) -> bool:
        """Whether one more round at ``sample_rate`` would push epsilon above ``target``."""
        if target is None:
            return False
        if not self.cfg.enabled or self.cfg.noise_multiplier <= 0:
            return True
        trial = copy.deepcopy(self._acc)
        trial.compose(_round_event(self.cfg.noise_multiplier, sample_rate), 1)
        return float(trial.get_epsilon(self.cfg.delta)) > target

    def to_dict(self) -> dict[str, Any]:
        eps = self.epsilon()
        return {
            "mode": self.cfg.mode,
            "noise_multiplier": self.cfg.noise_multiplier,
            "clip_norm": self.cfg.clip_norm,
            "delta": self.cfg.delta,
            "rounds": self.rounds,
            "epsilon": eps if math.isfinite(eps) else None,
        }
