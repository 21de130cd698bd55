"""Server-side validation and aggregation of sparse LoRA updates.

Why: the aggregator is the one place where untrusted bytes from devices turn into model changes.
Every update goes through :func:`validate_update` (the codec's structural checks plus numeric ones:
finite values and a norm cap) *before* it can touch any accumulator, so a malformed, NaN or
oversized update is rejected with a reason and the round continues with the others.

Aggregation is weighted FedAvg over sparse tensors (``np.add.at`` on flat indices, weights = number
of local examples; uniform under DP, see :mod:`fedcogen.server.fl.dp_guard`), followed by a server optimiser step: plain FedAvg (``G += server_lr * mean``) or
the adaptive FedAdam / FedYogi of Reddi et al. 2021 ("Adaptive Federated Optimization") whose
moment state is part of the checkpoint.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedcogen.protocols.codecs import sparse_codec as codec

log = logging.getLogger(__name__)

SERVER_OPTS = ("fedavg", "fedadam", "fedyogi")


class RejectedUpdate(codec.UpdateRejected):
    """Raised for problems the codec does not judge (norm caps, weights); structural ones raise the
    codec's own ``UpdateRejected``, the base class. Both carry ``.reason`` (a short countable code).

    Subclassing the codec's class gives the aggregator one type meaning "the client's update is
    bad": only that is a counted rejection; any other exception is a server bug and must surface.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        ValueError.__init__(self, f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.tensor = None
        self.internal = False


def rejection_reason(exc: BaseException) -> str:
    """Short, countable reason of a rejected update (``codec.UpdateRejected.reason`` when present)."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason:
        return reason
    return type(exc).__name__


@dataclass
class ValidationLimits:
    """Caps applied to every incoming update (beyond the codec's structural checks)."""

    max_bytes: int = 64 * 1024 * 1024
    max_norm: float = 1e4
    max_abs: float = 1e4


def validate_update(
    blob: bytes,
    shapes: Mapping[str, tuple[int, ...]],
    limits: ValidationLimits = ValidationLimits(),
    support: codec.SupportRule | None = None,
) -> dict[str, Any]:
    """Decode and fully validate one client blob; raise (codec) ``UpdateRejected`` on any problem.

    Structural checks (names, shapes, index ranges, sorted unique indices, finite values, declared
    vs actual sizes, size cap) are the codec's; absent tensors count as zero. Here we add: the
    update's L2 norm / max magnitude must be below the caps (a "huge" update is as harmful
    to FedAvg as a NaN one). ``support`` (a run on shared random supports): only values on this round's
    support, every record of its size (the codec's ``support`` verdict), so the sum is exact on it.
    """
    if not isinstance(blob, bytes | bytearray):
        raise RejectedUpdate("not_bytes", f"update payload is {type(blob).__name__}, expected bytes")
    if len(blob) > limits.max_bytes:
        raise RejectedUpdate("oversize", f"{len(blob)} bytes > cap {limits.max_bytes}")
    # The codec raises only UpdateRejected; a decoder bug arrives as one with ``internal=True``.
    sparse = codec.decode_sparse(bytes(blob), shapes, max_bytes=limits.max_bytes, expect=support)
    unknown = set(sparse) - set(shapes)
    if unknown:  # the codec already checks this; kept so the invariant holds whatever the codec does
        raise RejectedUpdate("unknown_tensor", f"{sorted(unknown)[:3]}")
    sq = 0.0
    for name, st in sparse.items():
        vals = np.asarray(st.values)
        idx = np.asarray(st.indices)
        size = int(np.prod(shapes[name]))
        if vals.shape != idx.shape:
            raise RejectedUpdate("bad_values", f"{name}: {vals.size} values for {idx.size} indices")
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= size):
            raise RejectedUpdate("index_range", name)
        if idx.size > 1 and not bool(np.all(np.diff(idx.astype(np.int64)) > 0)):
            raise RejectedUpdate("unsorted", name)
        if not bool(np.all(np.isfinite(vals))):
            raise RejectedUpdate("nonfinite", name)
        if vals.size and float(np.max(np.abs(vals))) > limits.max_abs:
            raise RejectedUpdate("value_too_large", f"{name}: |v| > {limits.max_abs}")
        sq += float(np.sum(np.square(vals.astype(np.float64))))
    norm = math.sqrt(sq)
    if not math.isfinite(norm) or norm > limits.max_norm:
        raise RejectedUpdate("norm_too_large", f"L2 norm {norm:.3g} > cap {limits.max_norm}")
    return sparse


class SparseAccumulator:
    """Weighted sum of validated sparse updates in dense float64 buffers (exact enough, order-stable)."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.shapes = {k: tuple(v) for k, v in shapes.items()}
        self.sums = {k: np.zeros(int(np.prod(s)), dtype=np.float64) for k, s in self.shapes.items()}
        self.total_weight = 0.0
        self.count = 0

    def add(self, sparse: Mapping[str, Any], weight: float) -> None:
        if not weight > 0 or not math.isfinite(weight):
            raise RejectedUpdate("bad_weight", f"weight {weight}")
        for name, st in sparse.items():
            idx = np.asarray(st.indices, dtype=np.int64)
            np.add.at(self.sums[name], idx, np.asarray(st.values, dtype=np.float64) * weight)
        self.total_weight += float(weight)
        self.count += 1

    def mean(self) -> dict[str, np.ndarray]:
        """Weighted mean as float32 tensors (zeros if nothing was added)."""
        w = self.total_weight if self.total_weight > 0 else 1.0
        return {k: (self.sums[k] / w).astype(np.float32).reshape(self.shapes[k]) for k in self.shapes}


def dense_weighted_mean(updates: Sequence[tuple[Mapping[str, np.ndarray], float]]) -> dict[str, np.ndarray]:
    """Reference dense FedAvg (what sparse aggregation at density 1.0 must equal)."""
    total = sum(w for _, w in updates)
    names = list(updates[0][0])
    return {
        k: (sum(np.asarray(u[k], np.float64) * w for u, w in updates) / total).astype(np.float32)
        for k in names
    }


@dataclass
class ServerOptConfig:
    """Server optimiser: ``fedavg`` (lr 1 = plain FedAvg), ``fedadam`` or ``fedyogi`` (Reddi et al.)."""

    name: str = "fedavg"
    lr: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        if self.name not in SERVER_OPTS:
            raise ValueError(f"server optimiser must be one of {SERVER_OPTS}, got {self.name!r}")
        if not self.lr > 0:
            raise ValueError(f"server lr must be > 0 (got {self.lr})")


@dataclass
class ServerOptimizer:
    """Applies the aggregated pseudo-gradient to the true global adapter; state is checkpointable."""

    cfg: ServerOptConfig
    m: dict[str, np.ndarray] = field(default_factory=dict)
    v: dict[str, np.ndarray] = field(default_factory=dict)
    steps: int = 0

    def step(self, global_adapter: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Return the new global adapter given the weighted-mean client update ``delta``."""
        c = self.cfg
        out: dict[str, np.ndarray] = {}
        for k, g in global_adapter.items():
            d = np.asarray(delta[k], dtype=np.float32)
            if c.name == "fedavg":
                out[k] = (g + np.float32(c.lr) * d).astype(np.float32)
                continue
            m = self.m.get(k, np.zeros_like(d))
            v = self.v.get(k, np.full_like(d, c.tau * c.tau))
            m = (c.beta1 * m + (1 - c.beta1) * d).astype(np.float32)
            d2 = np.square(d)
            if c.name == "fedadam":
                v = (c.beta2 * v + (1 - c.beta2) * d2).astype(np.float32)
            else:  # fedyogi
                v = (v - (1 - c.beta2) * d2 * np.sign(v - d2)).astype(np.float32)
            self.m[k], self.v[k] = m, v
            out[k] = (g + c.lr * m / (np.sqrt(v) + c.tau)).astype(np.float32)
        self.steps += 1
        return out

    def state_arrays(self) -> dict[str, np.ndarray]:
        arrays = {f"m/{k}": v for k, v in self.m.items()}
        arrays.update({f"v/{k}": v for k, v in self.v.items()})
        return arrays

    def load_state_arrays(self, arrays: Mapping[str, np.ndarray], steps: int) -> None:
        self.m = {k[2:]: np.asarray(v, np.float32) for k, v in arrays.items() if k.startswith("m/")}
        self.v = {k[2:]: np.asarray(v, np.float32) for k, v in arrays.items() if k.startswith("v/")}
        self.steps = int(steps)


@dataclass
class RoundAggregate:
    """Outcome of one round's aggregation."""

    mean: dict[str, np.ndarray] | None
    accepted: list[str]
    rejected: Counter
    total_weight: float
    kept: list[tuple[dict[str, Any], float]] = field(default_factory=list)  # accepted (update, weight) if kept


class RoundAggregator:
    """Collects the blobs of one round: validate each, accumulate the good ones, count the bad ones.

    The accumulator is only touched after an update passed validation completely, so a rejected
    update can never leave partial state behind.
    """

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], limits: ValidationLimits = ValidationLimits(),
                 keep: bool = False, check: Callable[[Mapping[str, Any]], None] | None = None,
                 support: codec.SupportRule | None = None):
        self.shapes = dict(shapes)
        self.limits = limits
        self.support = support  # the round's shared random support, when the run uses one
        self.check = check  # extra verdict on the decoded update (the DP clip), raises RejectedUpdate
        self.acc = SparseAccumulator(shapes)
        self.accepted: list[str] = []
        self.rejected: Counter = Counter()
        self.kept: list[tuple[dict[str, Any], float]] = []  # accepted (update, weight), only when ``keep``
        self.keep = keep

    def offer(self, client: str, blob: Any, weight: Any) -> str | None:
        """Validate and accumulate; return ``None`` if accepted, else the rejection reason.

        Only validation verdicts (:class:`codec.UpdateRejected`, which includes :class:`RejectedUpdate`)
        are counted as rejections. Anything else, including a decoder error converted by the codec
        (``internal=True``), is a server bug: logged with its traceback and re-raised, never
        disguised as a bad client.
        """
        try:
            try:
                w = float(weight)
            except (TypeError, ValueError, OverflowError) as exc:
                raise RejectedUpdate("bad_weight", f"{weight!r}") from exc
            if not (w > 0 and math.isfinite(w)):
                raise RejectedUpdate("bad_weight", f"{weight!r}")
            sparse = validate_update(blob, self.shapes, self.limits, self.support)
            if self.check is not None:
                self.check(sparse)
            self.acc.add(sparse, w)
            if self.keep:
                self.kept.append((sparse, w))
        except codec.UpdateRejected as exc:
            if exc.internal:
                log.exception("server error while validating the update from %s", client)
                raise
            reason = rejection_reason(exc)
            self.rejected[reason] += 1
            log.warning("rejected update from %s: %s (%s)", client, reason, exc)
            return reason
        except Exception:
            log.exception("server error while aggregating the update from %s", client)
            raise
        self.accepted.append(client)
        return None

    def result(self) -> RoundAggregate:
        mean = self.acc.mean() if self.acc.count else None
        return RoundAggregate(mean, list(self.accepted), Counter(self.rejected), self.acc.total_weight,
                              list(self.kept))
