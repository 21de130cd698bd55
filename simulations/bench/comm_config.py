"""A `fedcogen bench comm` preset: the shared recipe, the variants to compare and the benchmark's rules,
read from a TOML file in this folder (``comm_full.toml``, ``comm_quick.toml``) or any file ``--config`` names.

Why a file: what was compared, on what recipe, under which convergence rule and learning-rate sweep is
then data beside the result it produced (the result JSON embeds the whole preset), not constants spread
over the code. Tables:

* ``[recipe]``: run-config keys every run shares (model, clients, rounds are set per run by the benchmark);
* ``[bench]``: ``variants`` (names in ``variants_file``, each optionally ``NAME:N`` with its own cap),
  ``seeds``, ``lr_grid``, ``sweep_rounds``, ``sweep_seed``, ``plateau_window``, ``plateau_min_gain``,
  ``dense_max_rounds``, ``variant_max_rounds``, ``levels`` (fractions of dense's improvement).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcogen.config_file import read_config_file
from fedcogen.run_config import FLSettings
from fedcogen.simulations.bench.comm_variants import DENSE_NAME, VARIANTS_FILE, Variant, load_variants, pick

HERE = Path(__file__).resolve().parent
FULL_PRESET = HERE / "comm_full.toml"
QUICK_PRESET = HERE / "comm_quick.toml"
SET_PER_RUN = ("rounds", "lr", "seed", "out_dir", "data_dir", "target_eval_loss", "stop_after", "resume", "overwrite")


@dataclass
class CommBenchConfig:
    """Everything one `fedcogen bench comm` invocation runs and how it judges the runs."""

    recipe: dict[str, Any] = field(default_factory=dict)
    variants: tuple[str, ...] = ()
    variants_file: str = str(VARIANTS_FILE)
    seeds: tuple[int, ...] = (0, 1, 2)
    lr_grid: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    sweep_rounds: int = 4
    sweep_seed: int = 0
    plateau_window: int = 3
    plateau_min_gain: float = 0.05
    dense_max_rounds: int = 40
    variant_max_rounds: int = 60
    levels: tuple[float, ...] = (0.25, 0.5, 0.9, 1.0)
    source: str = ""  # the preset file it was read from

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"comm benchmark config{f' {self.source}' if self.source else ''}: {what}")

        need(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), "seeds must be distinct, at least one")
        need(len(self.lr_grid) >= 1 and all(lr > 0 for lr in self.lr_grid), "lr_grid needs positive learning rates")
        need(self.sweep_rounds >= 1, "sweep_rounds must be >= 1")
        need(self.plateau_window >= 1, "plateau_window must be >= 1 evaluation")
        need(0 < self.plateau_min_gain < 1, "plateau_min_gain must be in (0, 1)")
        need(self.dense_max_rounds >= 1 and self.variant_max_rounds >= 1, "round caps must be >= 1")
        need(all(0 < p <= 1 for p in self.levels), "levels are fractions of dense's improvement, in (0, 1]")
        fixed = sorted(set(self.recipe) & set(SET_PER_RUN))
        need(not fixed, f"[recipe] sets {', '.join(fixed)}, which the benchmark sets per run ([bench] seeds, "
             "lr_grid, round caps)")
        try:
            FLSettings.from_mapping(self.recipe)
        except (TypeError, ValueError) as e:
            raise ValueError(f"comm benchmark config {self.source}: [recipe]: {e}") from e
        need(self.recipe.get("eval_every", 1) >= 1, "recipe eval_every must be >= 1")
        self.chosen()  # unknown names fail here, before any run

    @classmethod
    def from_file(cls, path: str | Path) -> CommBenchConfig:
        p = Path(path)
        data = read_config_file(p)  # a missing or malformed file is an error naming it
        unknown = set(data) - {"recipe", "bench"}
        if unknown:
            raise ValueError(f"comm benchmark config {p}: unknown tables {sorted(unknown)} (known: recipe, bench)")
        bench = dict(data.get("bench") or {})
        names = {f.name for f in dataclasses.fields(cls)} - {"recipe", "source"}
        bad = sorted(set(bench) - names)
        if bad:
            raise ValueError(f"comm benchmark config {p}: unknown [bench] keys {bad} (known: {sorted(names)})")
        if "variants_file" in bench:  # relative to the preset's own folder
            bench["variants_file"] = str(p.parent / bench["variants_file"])
        for k in ("variants", "seeds", "lr_grid", "levels"):
            if k in bench:
                bench[k] = tuple(bench[k])
        return cls(recipe=dict(data.get("recipe") or {}), source=str(p), **bench)

    def registry(self) -> dict[str, Variant]:
        return load_variants(self.variants_file)

    def dense(self) -> Variant:
        return self.registry()[DENSE_NAME]

    def chosen(self) -> list[Variant]:
        return pick(list(self.variants), self.registry())

    def with_overrides(self, **changes: Any) -> CommBenchConfig:
        """A copy with the given fields replaced (flags over the file); None values are ignored."""
        given = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **given)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def preset(quick: bool) -> CommBenchConfig:
    """The full-size preset (SmolLM2, what `fedcogen bench comm` runs) or the quick one (`--quick`)."""
    return CommBenchConfig.from_file(QUICK_PRESET if quick else FULL_PRESET)


def recipe_settings(recipe: Mapping[str, Any], engine: str, out: Path) -> dict[str, Any]:
    """The recipe as run settings: engine and a data folder named by the user count (runs never clash)."""
    n = int(recipe.get("num_clients", FLSettings().num_clients))
    return {**recipe, "engine": engine, "data_dir": str(out / f"data-{n}users")}


__all__ = ["CommBenchConfig", "FULL_PRESET", "QUICK_PRESET", "preset", "recipe_settings"]
