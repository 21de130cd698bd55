"""The runs `fedcogen bench comm` compares: dense fp32 LoRA FedAvg and named compressed variants.

Why a registry: the benchmark, its CLI and the README name variants the same way, and a variant is
nothing but run-config overrides (:class:`fedcogen.run_config.FLSettings` keys) on top of the
benchmark's shared recipe, so every variant runs the real apps with the same data and seeds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedcogen.run_config import FLSettings


@dataclass(frozen=True)
class Variant:
    """A named set of run-config overrides; ``lr_scale`` multiplies the recipe's local learning rate."""

    name: str
    help: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    lr_scale: float = 1.0
    max_rounds: int = 0  # this variant's own cap (0 = the benchmark's)

    def settings(self, base: Mapping[str, Any]) -> dict[str, Any]:
        cfg = {**base, **self.overrides}
        cfg["lr"] = float(base["lr"]) * self.lr_scale
        return cfg


DENSE = Variant("dense", "dense fp32 LoRA FedAvg: every client sends and receives the whole adapter in fp32",
                {"lora_mode": "lora", "density": 1.0, "quant": "fp32", "down_density": 1.0, "down_quant": "fp32"})

VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("sparse-int8", "today's default: LoRA A and B, top-10% + error feedback, int8 values",
            {"lora_mode": "lora", "density": 0.1, "quant": "int8"}),
    Variant("sparse-int4", "LoRA A and B, top-10% + error feedback, int4 values",
            {"lora_mode": "lora", "density": 0.1, "quant": "int4"}),
    Variant("sparse-int4-down10", "LoRA A and B, top-10% + error feedback, int4; the broadcast also top-10% "
            "(server error feedback keeps the rest)", {"lora_mode": "lora", "density": 0.1, "quant": "int4",
                                                      "down_density": 0.1}),
    Variant("sparse-int4-d5", "LoRA A and B, top-5% + error feedback, int4 values",
            {"lora_mode": "lora", "density": 0.05, "quant": "int4"}),
    Variant("freeze-a", "FFA-LoRA (exact): only B trained, top-5% + error feedback, int4 values",
            {"lora_mode": "freeze_a", "density": 0.05, "quant": "int4"}),
    Variant("freeze-a-int4", "FFA-LoRA (exact): only B trained, every B entry sent both ways, int4 values",
            {"lora_mode": "freeze_a", "density": 1.0, "quant": "int4", "down_density": 1.0}),
    Variant("freeze-a-lr2", "FFA-LoRA (exact): only B trained, top-5% + error feedback, int4 values, lr x2",
            {"lora_mode": "freeze_a", "density": 0.05, "quant": "int4"}, lr_scale=2.0),
    Variant("freeze-a-lr2-down5", "FFA-LoRA (exact): only B, top-5% + error feedback both ways (broadcast top-5% "
            "too), int4 values, lr x2", {"lora_mode": "freeze_a", "density": 0.05, "quant": "int4",
                                         "down_density": 0.05}, lr_scale=2.0),
    Variant("freeze-a-d2-lr2", "FFA-LoRA (exact): only B, top-2% + error feedback, int4 values, lr x2",
            {"lora_mode": "freeze_a", "density": 0.02, "quant": "int4"}, lr_scale=2.0),
    Variant("freeze-a-d2-lr2-down2", "FFA-LoRA (exact): only B, top-2% + error feedback both ways, int4, lr x2",
            {"lora_mode": "freeze_a", "density": 0.02, "quant": "int4", "down_density": 0.02}, lr_scale=2.0),
    Variant("core-int8", "Fed-SB-style r x r core (exact), every core entry sent, int8 values",
            {"lora_mode": "core", "density": 1.0, "quant": "int8", "down_density": 1.0}, lr_scale=2.0),
    Variant("core-int4", "Fed-SB-style r x r core (exact), every core entry sent, int4 values",
            {"lora_mode": "core", "density": 1.0, "quant": "int4", "down_density": 1.0}, lr_scale=2.0),
    Variant("core-int4-lr10", "Fed-SB-style r x r core (exact), every entry sent, int4 values, lr x3.3",
            {"lora_mode": "core", "density": 1.0, "quant": "int4", "down_density": 1.0}, lr_scale=10 / 3),
    Variant("core32-int4", "Fed-SB-style core of rank 32 (1,024 values per module, exact), int4 values",
            {"lora_mode": "core", "lora_r": 32, "lora_alpha": 64, "density": 1.0, "quant": "int4",
             "down_density": 1.0}, lr_scale=2.0),
    Variant("core-top50-int4", "Fed-SB-style core (exact), top-50% + error feedback, int4 values",
            {"lora_mode": "core", "density": 0.5, "quant": "int4", "down_density": 1.0}, lr_scale=2.0),
    Variant("sparse-int8-warmup", "today's sparse 10% int8 after 2 warm-up rounds that send every entry",
            {"lora_mode": "lora", "density": 0.1, "quant": "int8", "warmup_rounds": 2}),
    Variant("sparse-int8-adam", "today's sparse 10% int8 with FedAdam on the sparse aggregate (server momentum)",
            {"lora_mode": "lora", "density": 0.1, "quant": "int8", "server_opt": "fedadam", "server_lr": 0.003}),
)}

QUICK_DEFAULT = ("sparse-int8", "sparse-int4", "sparse-int8-warmup", "sparse-int8-adam", "freeze-a", "core-int8",
                 "core-int4", "core-top50-int4")
FULL_DEFAULT = ("sparse-int8", "core-int4")


def pick(names: str | None, quick: bool) -> list[Variant]:
    """Variants by comma-separated name, each optionally ``name:N`` with its own round cap N (``None`` or
    empty: the default list for the mode)."""
    wanted = [n.strip() for n in (names or "").split(",") if n.strip()] or list(QUICK_DEFAULT if quick else FULL_DEFAULT)
    out = []
    for item in wanted:
        name, _, cap = item.partition(":")
        if name not in VARIANTS:
            raise ValueError(f"unknown comm variant {name!r}; known: {', '.join(VARIANTS)}")
        if cap and not (cap.isdigit() and int(cap) >= 1):
            raise ValueError(f"variant {item!r}: the round cap after ':' must be a positive integer")
        out.append(dataclasses.replace(VARIANTS[name], max_rounds=int(cap or 0)))
    return out


def check_registry() -> None:
    """Every variant's overrides are valid run-config keys and values (tested)."""
    for v in (DENSE, *VARIANTS.values()):
        FLSettings.from_mapping(dict(v.overrides))
