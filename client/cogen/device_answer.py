"""What one device-side generation returns."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class DeviceAnswer:
    """One CoGenesis answer from the device: the text and what it cost (bytes, cloud calls, time)."""

    text: str
    variant: str
    tokens: int
    tokens_per_s: float
    cloud_calls: int
    cloud_call_fraction: float
    bytes_sent: int
    bytes_received: int
    fell_back: bool
    latency_s: float
    token_ids: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    sketch: str | None = None
    cloud_round_trips: int = 0  # times the device waited for cloud distributions (per-token: one per call; speculative: one per round)
    private_tokens: int = 0  # committed tokens kept off the wire by private-span protection
    wire_records: list[Any] = field(default_factory=list, repr=False)  # what this answer put on the wire

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "wire_records"}
