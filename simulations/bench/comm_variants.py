"""The runs `fedcogen bench comm` compares, read from a TOML file (``simulations/bench/comm_variants.toml``).

Why data, not code: a variant is nothing but run-config overrides (:class:`fedcogen.run_config.FLSettings`
keys) on top of the benchmark's shared recipe, so adding one is an edit of a config file in the folder of
its experiment, and every variant runs the real apps with the same data and seeds. Its learning rate is
not part of it: the benchmark's sweep tunes every run family's rate the same way
(:mod:`fedcogen.simulations.bench.comm_protocol`).

File format: one table per variant, named by the variant; ``help`` (one line, required) and ``max_rounds``
(optional round cap of its own) are the variant's; every other key is a run-config override.
The table ``dense`` is the baseline every other run is compared with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcogen.config_file import read_config_file
from fedcogen.run_config import FLSettings

VARIANTS_FILE = Path(__file__).with_name("comm_variants.toml")
DENSE_NAME = "dense"
OWN_KEYS = ("help", "max_rounds")  # a variant's own keys; every other key is a run-config override


@dataclass(frozen=True)
class Variant:
    """A named set of run-config overrides, with an optional round cap of its own (0 = the benchmark's)."""

    name: str
    help: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    max_rounds: int = 0

    def settings(self, base: Mapping[str, Any], lr: float | None = None) -> dict[str, Any]:
        """The recipe with this variant's overrides (and the learning rate the sweep chose)."""
        cfg = {**base, **self.overrides}
        if lr is not None:
            cfg["lr"] = float(lr)
        return cfg


def parse_variants(data: Mapping[str, Any], source: str = "variants") -> dict[str, Variant]:
    """Variants from the parsed TOML tables; bad input raises ValueError naming the variant and key."""
    out: dict[str, Variant] = {}
    for name, table in data.items():
        if not isinstance(table, Mapping):
            raise ValueError(f"{source}: {name!r} must be a table ([{name}]) of run-config overrides")
        if not isinstance(table.get("help"), str) or not table["help"].strip():
            raise ValueError(f"{source}: variant {name!r} needs a one-line `help` saying what it sends")
        cap = table.get("max_rounds", 0)
        if not isinstance(cap, int) or cap < 0:
            raise ValueError(f"{source}: variant {name!r}: max_rounds must be an integer >= 0 (got {cap!r})")
        overrides = {k: v for k, v in table.items() if k not in OWN_KEYS}
        if "lr" in overrides:
            raise ValueError(f"{source}: variant {name!r} sets lr; the benchmark's sweep (lr_grid) chooses it")
        try:
            FLSettings.from_mapping(overrides)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: variant {name!r}: {e}") from e
        out[name] = Variant(name, table["help"].strip(), overrides, cap)
    if DENSE_NAME not in out:
        raise ValueError(f"{source}: no [{DENSE_NAME}] table (the baseline every run is compared with)")
    return out


def load_variants(path: str | Path = VARIANTS_FILE) -> dict[str, Variant]:
    """Every variant of a TOML file (validated: unknown run-config keys or bad values name the variant)."""
    return parse_variants(read_config_file(path), str(path))  # a missing or malformed file names itself


def pick(names: str | list[str] | tuple[str, ...], registry: Mapping[str, Variant]) -> list[Variant]:
    """Variants by name (a list, or a comma-separated string), each optionally ``name:N`` with its own round
    cap N. The baseline is not a variant to pick: it always runs."""
    wanted = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    out = []
    for item in wanted:
        name, _, cap = item.partition(":")
        if name == DENSE_NAME:
            raise ValueError(f"{DENSE_NAME!r} is the baseline and always runs; list only the variants to compare")
        if name not in registry:
            raise ValueError(f"unknown comm variant {name!r}; known: {', '.join(n for n in registry if n != DENSE_NAME)}")
        if cap and not (cap.isdigit() and int(cap) >= 1):
            raise ValueError(f"variant {item!r}: the round cap after ':' must be a positive integer")
        v = registry[name]
        out.append(Variant(v.name, v.help, v.overrides, int(cap) if cap else v.max_rounds))
    if len({v.name for v in out}) != len(out):
        raise ValueError(f"variants listed twice: {wanted}")
    return out


__all__ = ["Variant", "VARIANTS_FILE", "DENSE_NAME", "parse_variants", "load_variants", "pick"]
