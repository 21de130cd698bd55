"""The server's side of differential privacy: what it enforces on every update and what it reports.

Why a separate guard: the accountant's epsilon is only true if every term of the mean it noises
has the sensitivity it assumes. The server therefore does not trust clients for any of it:

* **Weights.** Under DP the mean is the *uniform* mean of the accepted updates: a client's
  self-reported ``num-examples`` is ignored (weight 1 each), so one client moves the mean by at most
  ``C / n`` whatever it claims. (Example-weighted FedAvg would let one client claim a huge count and
  dominate the mean, while the noise assumes equal weights.)
* **Norm after dequantisation.** In ``server`` mode every decoded update (the exact values that enter
  the mean) must have L2 norm ``<= C``; above it the update is rejected (reason ``above_dp_clip``).
  In ``client`` mode the update carries the client's noise, so the bound is ``C`` plus a
  high-probability bound on the norm of ``k`` Gaussian values of std ``sigma C / sqrt(n)``
  (``sqrt(k) + 8`` standard deviations: a false reject has probability below ``e^-32``).
* **Accounting.** Each round's ``(sigma, sampling rate)`` is kept in the checkpoint and replayed on
  resume; the settings that define the guarantee are part of the resume fingerprint
  (:func:`dp_fingerprint`), so a resumed run cannot silently re-account past rounds under new values.
* **Secret noise and sample.** The noise (here and on the clients) and, under DP, the training
  sample come from :func:`fedcogen.protocols.privacy.dp.secret_rng`, never from the run seed, and nothing
  about them is checkpointed: a resumed run draws fresh noise, and the accountant continues from
  the rounds in ``dp_history``. The fingerprint names the noise source, so a checkpoint written by
  a version that drew noise from the seed (whose past rounds can be denoised) does not resume.
* **Amplification.** The accountant amplifies by subsampling only where the adversary it protects
  against does not know the sample (:attr:`DPGuard.amplification`): in ``server`` mode the sample is
  secret and released outputs do not name it; in ``client`` mode with SecAgg+ the adversary is the
  server, which chose the sample, so every round is accounted at rate 1 (no amplification).
* **Reporting.** ``server`` mode reports the central epsilon. ``client`` mode without secure
  aggregation reports no central epsilon: the server sees each noised update, so the guarantee it
  holds is the per-client *local* epsilon (:func:`fedcogen.protocols.privacy.dp_release.local_epsilon`); and
  the top-k positions are data-dependent and not covered by either (said in the report).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedcogen.protocols.privacy import dp
from fedcogen.protocols.privacy.dp_release import local_epsilon, local_noise_multiplier
from fedcogen.run_config import FLSettings
from fedcogen.server.fl.aggregation import RejectedUpdate

REL_TOL = 1e-6  # float32 rounding of a norm exactly at C
NOISE_SIGMAS = 8.0


def dp_fingerprint(s: FLSettings) -> dict[str, Any]:
    """The settings that define a run's DP guarantee (part of the resume fingerprint)."""
    if s.dp_mode == "none":
        return {"mode": "none"}
    fp = {"mode": s.dp_mode, "noise_multiplier": s.dp_noise_multiplier, "clip_norm": s.dp_clip_norm,
          "delta": s.dp_delta, "clients_per_round": s.clients_per_round, "noise_source": dp.NOISE_SOURCE}
    if s.dp_mode == "client":  # secure aggregation decides between the central and the local guarantee
        fp["secagg"] = s.secagg
    return fp


class DPGuard:
    """Per-update DP checks and the uniform weight; a no-op without DP."""

    def __init__(self, settings: FLSettings) -> None:
        self.s = settings
        self.enabled = settings.dp_mode != "none"

    def weight(self, reported: Any) -> Any:
        """The aggregation weight: 1 under DP (reported count ignored) and with a shared support (the
        SecAgg+ mean is uniform, its plain baseline too), else the reported count."""
        return 1.0 if self.enabled or self.s.secagg != "off" else reported

    def allowed_norm(self, k: int) -> float:
        """Largest decoded L2 norm accepted for an update with ``k`` sent values."""
        c = self.s.dp_clip_norm
        if self.s.dp_mode == "client" and self.s.dp_noise_multiplier > 0:
            std = dp.client_noise_std(self.dp_config())
            return c * (1 + REL_TOL) + std * (math.sqrt(max(0, k)) + NOISE_SIGMAS)
        return c * (1 + REL_TOL)

    def check(self, sparse: Mapping[str, Any]) -> None:
        """Raise :class:`RejectedUpdate` (``above_dp_clip``) if the decoded update exceeds the bound."""
        if not self.enabled:
            return
        sq = 0.0
        k = 0
        for st in sparse.values():
            v = np.asarray(st.values, np.float64)
            sq += float(np.dot(v, v))
            k += int(v.size)
        norm = math.sqrt(sq)
        bound = self.allowed_norm(k)
        if not norm <= bound:
            raise RejectedUpdate("above_dp_clip", f"decoded L2 norm {norm:.6g} > DP bound {bound:.6g}")

    def dp_config(self) -> dp.DPConfig:
        s = self.s
        return dp.DPConfig(mode=s.dp_mode, clip_norm=s.dp_clip_norm, noise_multiplier=s.dp_noise_multiplier,
                           delta=s.dp_delta, clients_per_round=max(1, s.clients_per_round))

    # ------------------------------------------------------------------ guarantees

    @property
    def amplified(self) -> bool:
        """Whether the accountant may claim amplification by subsampling (see the module doc)."""
        return self.s.dp_mode == "server"

    @property
    def amplification(self) -> str:
        """What the report says about amplification by subsampling, and why."""
        if self.amplified:
            return ("poisson-subsampling (sample secret: drawn from the OS CSPRNG, not named in metrics, "
                    "ledger or logs; only the trusted server knows it)")
        if self.central:
            return "none (the server, the adversary SecAgg+ guards against, chooses the sample: rate 1)"
        return "none (local guarantee: the server sees each client's noised update)"

    def accounted_rate(self, sample_rate: float) -> float:
        """The sampling rate the accountant composes with: the real one if amplified, else 1."""
        return sample_rate if self.amplified else 1.0

    @property
    def central(self) -> bool:
        """Whether the central (sum-level) epsilon is the guarantee this run holds."""
        return self.s.dp_mode == "server" or self.s.dp_mode == "client" and self.s.secagg == "secaggplus"

    def local_epsilon(self, participations: Mapping[str, int], extra: int = 0) -> float:
        """Largest per-client local epsilon (client mode without secure aggregation)."""
        most = max(participations.values(), default=0) + extra
        return local_epsilon(self.s.dp_noise_multiplier, max(1, self.s.clients_per_round), most, self.s.dp_delta)

    def report(self, accountant: Any, participations: Mapping[str, int]) -> dict[str, Any] | None:
        """The ``dp`` section of a run's results."""
        if not self.enabled or accountant is None:
            return None
        out = accountant.to_dict()
        out["noise_source"] = dp.NOISE_SOURCE + " (fresh 128-bit OS entropy per release, never stored)"
        out["amplification"] = self.amplification
        if self.central:
            out["guarantee"] = "central (user-level, the server sees only the noised mean)"
            return out
        eps = self.local_epsilon(participations)
        out.update({
            "epsilon": None,
            "central_epsilon_not_valid": "dp_mode=client without secure aggregation: the server sees every "
                                         "noised update, so only the local guarantee holds",
            "guarantee": "local (per client, what the server sees of one client's noised updates)",
            "local_epsilon": eps if math.isfinite(eps) else None,
            "local_noise_multiplier": local_noise_multiplier(self.s.dp_noise_multiplier,
                                                             max(1, self.s.clients_per_round)),
            "max_participations": max(participations.values(), default=0),
            "positions_covered": False,
            "note": "top-k positions are chosen from the data and sent in the clear; neither guarantee covers them",
        })
        return out
