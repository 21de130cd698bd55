"""What the accepted updates of one training round report, summed for the round's metrics row."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedcogen.protocols import fl_messages as fm


@dataclass
class RoundTally:
    """Failures by client, and the train loss, throughput and index bits of every accepted update."""

    failures: dict[str, str] = field(default_factory=dict)
    losses: list[tuple[float, float]] = field(default_factory=list)  # (loss, examples)
    tokens_per_s: list[float] = field(default_factory=list)
    index_bits: float = 0.0
    bound_bits: float = 0.0  # the information bound of those index bits

    def add(self, met: Mapping[str, Any]) -> None:
        self.losses.append((float(met.get("train_loss", float("nan"))), float(met.get(fm.NUM_EXAMPLES, 1.0))))
        self.tokens_per_s.append(float(met.get("tokens_per_s", 0.0)))
        self.index_bits += float(met.get("index_bits", 0.0))
        self.bound_bits += float(met.get("bound_bits", 0.0))

    def fields(self) -> dict[str, float]:
        """The round's example-weighted train loss, mean client throughput and index bits over bound."""
        wsum = sum(w for _, w in self.losses)
        return {
            "train_loss": sum(loss * w for loss, w in self.losses) / wsum if wsum else float("nan"),
            "client_tokens_per_s": float(np.mean(self.tokens_per_s)) if self.tokens_per_s else 0.0,
            "index_bits_over_bound": self.index_bits / self.bound_bits if self.bound_bits > 0 else math.nan,
        }
