"""The run configuration of a federated sparse-LoRA run: one dataclass, one key map, one loader.

Why one place: the same settings reach the ServerApp from ``flwr run .`` (pyproject
``[tool.flwr.app.config]`` plus ``--run-config`` overrides), from ``fedcogen simulate`` (flags and
config files) and from experiment configs (privacy, secure aggregation, demo) that *hold* an
:class:`FLSettings` instead of copying its fields. Defaults, ranges, enums and the help text of
every knob live here; the CLI builds its flags from the field metadata.

Two spellings of one setting, both defined here:

* **run-config keys**, grouped by concern as Flower's flowertune apps do (``lora.r``,
  ``compress.density``, ``dp.noise-multiplier``, ...; :data:`RUN_KEYS`): what a user writes in
  pyproject, ``flwr run --run-config`` and ``fedcogen simulate --config`` files. A test checks
  pyproject's table equals :func:`app_config`.
* **attribute names** (``lora_r``, ``density``): the Python fields, the flags of ``fedcogen
  simulate`` (``--lora-r``), the keys inside train/evaluate messages and the ``settings`` recorded in
  checkpoints and result files, so the modules that read settings need not know about the groups.

Test-only knobs (fault injection, ``testing.*``) are fields too, so the test-only ClientApp receives
them like any setting, but they are not in the project's table: ``flwr run .`` cannot turn on
failures (Flower rejects overrides of keys the table lacks); the one-file app of the fault ClientApp
declares them.

Strictness: unknown keys and malformed values are errors naming the key, so a typo in
``--run-config`` fails before a round runs instead of silently training on a default. A pre-grouping
flat key (``lora_r``) is an error naming its new key (``lora.r``), not a warning: Flower itself
rejects it against the grouped pyproject table, so accepting it elsewhere would make one config
file work with ``fedcogen simulate`` and fail with ``flwr run``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcogen.accelerator import SETTINGS_HELP, DeviceError, check_setting
from fedcogen.protocols.codecs.shared_support import round_support_seed
from fedcogen.protocols.fl_messages import SchemaError

SCOPES = ("per_tensor", "global")
QUANTS = ("fp32", "fp16", "int8", "int4", "sign1")
LORA_MODES = ("lora", "freeze_a", "core", "core_rand")  # fedcogen.lora_exact (kept equal by a test)
INDEX_CODINGS = ("auto", "bitmap", "delta_varint", "rice")
SUPPORTS = ("topk", "random")  # which entries an update sends (protocols/codecs/shared_support.py)
SERVER_OPTS = ("fedavg", "fedadam", "fedyogi")
DP_MODES = ("none", "client", "server")
SECAGG_MODES = ("off", "plain", "secaggplus")
NOISE_HEADROOM = 6.0  # client-DP noise std's of room below the SecAgg+ range (fedcogen.secagg.release_at_support)
EVAL_ON = ("all", "round")

_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


class RunConfigError(SchemaError):
    """A run setting is unknown, malformed or out of range; the message names the key."""


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class FLSettings:
    """Every knob of a federated run (run-config keys: :data:`RUN_KEYS`; ``[tool.flwr.app.config]``).

    The ServerApp reads them from ``context.run_config`` through :func:`load_run_config` and
    forwards the client-relevant ones (:data:`CLIENT_KEYS`) inside every ``train``/``evaluate``
    message, so clients need no configuration of their own and cannot drift from the server.
    Defaults are a quick run of the tiny model (seconds per round on a CPU).
    """

    model: str = _f("tiny", "base model: tiny, tiny-large, smollm2, smollm2-27l (the demo's device model), smollm2-24l, smollm2-half or a local HF directory")
    seed: int = _f(0, "seed of data, model, sampling and training")
    device: str = _f("auto", f"where clients train and evaluate: {SETTINGS_HELP} (a SuperNode's own node-config "
                             "device wins; docs/gpu.md)")
    data_dir: str = _f("", "folder of the synthetic federation ('' = <out_dir>/data, generated from seed; "
                           "a SuperNode's own node-config data-dir wins)")
    # 2 = the SuperNodes Flower's local simulation starts by default, so `flwr run .` needs no
    # --federation-config to find every client (the server waits for num_clients nodes)
    num_clients: int = _f(2, "number of devices (Flower SuperNodes / partitions)")
    clients_per_round: int = _f(2, "devices sampled per round")
    rounds: int = _f(2, "federated rounds")
    local_steps: int = _f(4, "local AdamW steps per round on each device")
    batch_size: int = _f(4, "examples per local step")
    lr: float = _f(5e-4, "local learning rate")
    max_seq_len: int = _f(256, "tokens per example (prompt truncated from the left)")
    # off by default: it teaches the device to invent facts instead of copying them from the context
    # (docs/personalisation.md); privacy runs turn it on so the canaries planted in those texts are trained on
    history_examples: bool = _f(False, "also train on the user's past texts (no context; privacy runs need it "
                                       "for canaries)")
    # training rewards copying from the context, not memorising one user's facts
    fact_swaps: int = _f(0, "counterfactual copies of each training task with the user's private values swapped "
                            "(teaches copying)")
    lora_r: int = _f(8, "LoRA rank")
    lora_alpha: int = _f(16, "LoRA alpha")
    lora_dropout: float = _f(0.05, "LoRA dropout")
    lora_targets: str = _f("q_proj,v_proj", "comma-separated module names that get LoRA")
    lora_mode: str = _f("lora", "what is trained and averaged: lora (A and B, averaged apart: inexact), "
                                "freeze_a (FFA-LoRA: only B, exact), core (Fed-SB: r x r core between frozen "
                                "factors from a public-data gradient, exact), core_rand (core, random factors)")
    density: float = _f(0.01, "fraction of each client update sent (top-k; 1.0 = dense)")
    scope: str = _f("per_tensor", "top-k per_tensor or global")
    quant: str = _f("int8", "value precision on the wire: fp32, fp16, int8, int4, sign1 (1 bit + a per-tensor scale)")
    index_coding: str = _f("auto", "index code: auto, bitmap, delta_varint, rice")
    support: str = _f("topk", "which entries are sent both ways: topk (the largest; their indices on the wire) or "
                              "random (a shared random support from the run seed and round: no indices, the "
                              "server's sum exact on it)")
    down_density: float = _f(0.0, "broadcast density (0 = density x clients_per_round)")
    down_quant: str = _f("", "broadcast precision ('' = same as quant)")
    warmup_rounds: int = _f(0, "first rounds that send every entry (density 1 both ways) before top-k starts")
    server_opt: str = _f("fedavg", "server optimiser: fedavg, fedadam, fedyogi")
    server_lr: float = _f(1.0, "server learning rate (1.0 + fedavg = plain FedAvg)")
    min_fit_clients: int = _f(1, "abort a round (model unchanged) if fewer updates are accepted")
    round_timeout: float = _f(600.0, "seconds to wait for replies each round")
    eval_every: int = _f(1, "evaluate on every client's private validation split every N rounds")
    eval_on: str = _f("all", "who evaluates: 'all' clients or only this 'round''s clients (no catch-up broadcasts)")
    eval_clients: int = _f(0, "evaluate only a fixed seeded cohort of this many clients (0 = every client); "
                              "cross-device runs: a few dozen out of thousands")
    max_update_norm: float = _f(1e4, "reject client updates with a larger L2 norm")
    max_update_bytes: int = _f(64 * 1024 * 1024, "reject client updates whose serialized blob is larger (bytes)")
    out_dir: str = _f("runs/federation", "output folder (metrics.json, ledger.json, checkpoint, plots)")
    client_state_dir: str = _f("", "folder of per-client state ('' = only Flower's context.state)")
    resume: bool = _f(False, "continue from the checkpoint in out_dir (refused if a result-altering setting "
                             "differs from the checkpoint's)")
    overwrite: bool = _f(False, "start afresh in an out_dir that holds a previous run, replacing its checkpoint, "
                                "metrics, ledger and client state (without it, and without resume, that is refused)")
    dp_mode: str = _f("none", "differential privacy: none, client, server")
    dp_clip_norm: float = _f(1.0, "DP clip norm")
    dp_noise_multiplier: float = _f(0.0, "DP noise multiplier")
    dp_delta: float = _f(1e-5, "DP delta")
    dp_target_epsilon: float = _f(0.0, "stop when epsilon would exceed this (0 = no budget)")
    secagg: str = _f("off", "off: top-k blobs; secaggplus: the values at a shared random support summed with "
                            "SecAgg+ (the server sees only the mean); plain: the same values in the clear (baseline)")
    secagg_range: float = _f(1.0, "SecAgg+ clipping range: values beyond +-range are clipped (the excess stays "
                                  "in the client's residual)")
    fail_prob: float = _f(0.0, "testing: probability that a client drops in a round")
    fail_nodes: str = _f("", "testing: 'P' (partition P fails every round) or 'P@R' (only in round R), comma separated")
    target_eval_loss: float = _f(0.0, "stop after the first evaluation whose loss is at or below this (0 = off)")
    stop_after: int = _f(0, "stop cleanly (checkpointed) after this many rounds in total (0 = run all); "
                            "continue later with resume")

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation

    def validate(self) -> None:
        """Ranges, enums and cross-field rules; raises :class:`RunConfigError` naming the key."""
        def need(ok: bool, key: str, rule: str) -> None:
            if not ok:
                raise RunConfigError(f"run config '{key}' = {getattr(self, key)!r}: {rule}")

        def one_of(key: str, choices: tuple[str, ...]) -> None:
            need(getattr(self, key) in choices, key, f"must be one of {', '.join(map(repr, choices))}")

        need(bool(self.model), "model", "must name a model")
        try:
            check_setting(self.device)
        except DeviceError:
            need(False, "device", f"must be one of: {SETTINGS_HELP}")
        need(self.num_clients >= 1, "num_clients", "must be >= 1")
        # may exceed num_clients: a deployment samples whoever is connected (the simulation is stricter)
        need(self.clients_per_round >= 1, "clients_per_round", "must be >= 1")
        need(self.rounds >= 1, "rounds", "must be >= 1")
        need(self.local_steps >= 0, "local_steps", "must be >= 0")
        need(self.batch_size >= 1, "batch_size", "must be >= 1")
        need(self.lr >= 0, "lr", "must be >= 0")
        need(self.max_seq_len >= 1, "max_seq_len", "must be >= 1")
        need(self.fact_swaps >= 0, "fact_swaps", "must be >= 0")
        need(self.lora_r >= 1, "lora_r", "must be >= 1")
        need(self.lora_alpha > 0, "lora_alpha", "must be > 0")
        need(0 <= self.lora_dropout < 1, "lora_dropout", "must be in [0, 1)")
        need(any(t.strip() for t in self.lora_targets.split(",")), "lora_targets", "must name a module")
        one_of("lora_mode", LORA_MODES)
        need(0 < self.density <= 1, "density", "must be in (0, 1]")
        one_of("scope", SCOPES)
        one_of("quant", QUANTS)
        one_of("index_coding", INDEX_CODINGS)
        one_of("support", SUPPORTS)
        if self.support == "random":
            need(self.scope == "per_tensor", "scope", "must be 'per_tensor' with support 'random' (a random "
                 "support is drawn per tensor; 'global' is a top-k threshold)")
            need(self.index_coding == "auto", "index_coding", "must be 'auto' with support 'random' (no indices "
                 "are sent)")
            need(self.secagg == "off", "secagg", "must be 'off' with support 'random' (secure aggregation draws "
                 "its own shared support: fedcogen/secagg.py)")
        need(0 <= self.down_density <= 1, "down_density", "must be in [0, 1] (0 = auto)")
        one_of("down_quant", ("", *QUANTS))
        one_of("server_opt", SERVER_OPTS)
        need(self.server_lr > 0, "server_lr", "must be > 0")
        need(self.warmup_rounds >= 0, "warmup_rounds", "must be >= 0")
        need(0 <= self.min_fit_clients <= self.clients_per_round, "min_fit_clients",
             f"must be in [0, clients_per_round={self.clients_per_round}] (more would abort every round)")
        need(self.round_timeout > 0, "round_timeout", "must be > 0")
        need(self.eval_every >= 0, "eval_every", "must be >= 0")
        one_of("eval_on", EVAL_ON)
        need(self.eval_clients >= 0, "eval_clients", "must be >= 0 (0 = every client)")
        need(self.max_update_norm > 0, "max_update_norm", "must be > 0")
        need(self.max_update_bytes > 0, "max_update_bytes", "must be > 0")
        one_of("dp_mode", DP_MODES)
        need(self.dp_clip_norm > 0, "dp_clip_norm", "must be > 0")
        need(self.dp_noise_multiplier >= 0, "dp_noise_multiplier", "must be >= 0")
        need(0 < self.dp_delta < 1, "dp_delta", "must be in (0, 1)")
        need(self.dp_target_epsilon >= 0, "dp_target_epsilon", "must be >= 0 (0 = no budget)")
        one_of("secagg", SECAGG_MODES)
        need(self.secagg_range > 0, "secagg_range", "must be > 0")
        if self.secagg == "secaggplus" and self.dp_mode == "client":
            std = self.dp_noise_multiplier * self.dp_clip_norm / max(1, self.clients_per_round) ** 0.5
            need(self.secagg_range > NOISE_HEADROOM * std, "secagg_range",
                 f"must exceed {NOISE_HEADROOM:g} x the client DP noise std ({NOISE_HEADROOM * std:.4g}): "
                 "SecAgg+ clips every value to +-secagg_range and must not clip the noise")
        need(0 <= self.fail_prob <= 1, "fail_prob", "must be in [0, 1]")
        need(self.stop_after >= 0, "stop_after", "must be >= 0")
        need(self.target_eval_loss >= 0, "target_eval_loss", "must be >= 0 (0 = off)")
        try:
            self.failing_nodes()
        except ValueError:
            need(False, "fail_nodes", "must be comma-separated 'P' or 'P@R' integers")

    # ------------------------------------------------------------------ mapping I/O

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> FLSettings:
        """Typed settings from a run config (``-`` or ``_`` in keys); unknown keys and bad values are errors."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for raw_key, raw in values.items():
            key = str(raw_key).replace("-", "_")
            if key not in names:
                hint = (f"; '{raw_key}' is a grouped run-config key, here settings go by attribute name "
                        f"('{ATTRIBUTES[raw_key]}')" if raw_key in ATTRIBUTES else "")
                raise RunConfigError(f"unknown setting '{raw_key}' (known: {', '.join(sorted(names))}){hint}")
            kwargs[key] = coerce(key, names[key].default, raw)
        return cls(**kwargs)

    @classmethod
    def from_run_config(cls, values: Mapping[str, Any]) -> FLSettings:
        """Typed settings from grouped run-config keys (dotted, or nested tables as TOML reads them)."""
        return cls.from_mapping(attributes_of(values))

    def to_config(self) -> dict[str, Any]:
        """Every setting by attribute name (what checkpoints and result files record)."""
        return dataclasses.asdict(self)

    def to_run_config(self) -> dict[str, Any]:
        """Every setting by grouped run-config key, in pyproject's order; test-only keys only when set
        (the project's app does not declare them, and Flower rejects overrides of undeclared keys)."""
        values = self.to_config()
        defaults = _defaults()
        return {key: values[name] for name, key in RUN_KEYS.items()
                if name not in TEST_ONLY or values[name] != defaults[name]}

    def replace(self, **changes: Any) -> FLSettings:
        return dataclasses.replace(self, **changes)

    def client_config(self) -> dict[str, Any]:
        """The client-side settings that differ from the defaults (every byte is on the ledger).

        Clients rebuild their settings from these keys over the *dataclass defaults* only (never
        over their own run config), so omitting a default value can never change what they use.
        """
        full = self.to_config()
        defaults = FLSettings().to_config()
        return {k: full[k] for k in CLIENT_KEYS if full[k] != defaults[k]}

    @classmethod
    def from_client_config(cls, config: Mapping[str, Any]) -> FLSettings:
        """What a client rebuilds from a ``train``/``evaluate`` config record (other record fields ignored)."""
        return cls.from_mapping({k: v for k, v in config.items() if k in CLIENT_KEYS})

    # ------------------------------------------------------------------ derived values

    def round_settings(self, server_round: int) -> FLSettings:
        """The settings of one round: warm-up rounds send every entry both ways (same quantisation)."""
        if 0 < server_round <= self.warmup_rounds:
            return self.replace(density=1.0, down_density=1.0)
        return self

    def effective_down_density(self) -> float:
        """``down_density``, or by default what the round's uploads can have touched: with top-k the union
        of every client's picks (density x clients), with a shared random support that support itself."""
        if self.down_density > 0:
            return min(1.0, self.down_density)
        if self.support == "random":
            return self.density
        return min(1.0, self.density * max(1, self.clients_per_round))

    def support_seed(self, server_round: int) -> int | None:
        """The public seed of round ``server_round``'s shared random supports (both ways); None with top-k."""
        return round_support_seed(self.seed, server_round) if self.support == "random" else None

    def failing_nodes(self) -> list[tuple[int, int | None]]:
        """``fail_nodes`` parsed as (partition, round or None for every round)."""
        out: list[tuple[int, int | None]] = []
        for item in filter(None, (x.strip() for x in self.fail_nodes.split(","))):
            pid, _, rnd = item.partition("@")
            out.append((int(pid), int(rnd) if rnd else None))
        return out

    def fails(self, partition_id: int, server_round: int) -> bool:
        """Whether the ``fail_nodes`` test hook says this partition must fail in this round."""
        return any(pid == partition_id and rnd in (None, server_round) for pid, rnd in self.failing_nodes())


CLIENT_KEYS = (
    "model", "seed", "data_dir", "num_clients", "clients_per_round", "local_steps", "batch_size", "lr",
    "max_seq_len", "lora_r", "lora_alpha", "lora_dropout", "lora_targets", "lora_mode", "density", "scope", "quant",
    "index_coding", "support", "dp_mode", "dp_clip_norm", "dp_noise_multiplier", "dp_delta", "client_state_dir",
    "fail_prob", "fail_nodes", "history_examples", "fact_swaps", "secagg", "secagg_range", "device",
)


# Attribute name -> grouped run-config key, in the order of pyproject's [tool.flwr.app.config]. Groups
# follow what a reader looks for (flowertune's model.* / train.* / strategy.*); the leaf is the old
# name without its group prefix, hyphenated as Flower's own keys are.
RUN_KEYS: dict[str, str] = {
    "seed": "seed",
    "model": "model.name",
    "device": "model.device",
    "data_dir": "data.dir",
    "history_examples": "data.history-examples",
    "fact_swaps": "data.fact-swaps",
    "num_clients": "strategy.num-clients",
    "clients_per_round": "strategy.clients-per-round",
    "rounds": "strategy.rounds",
    "min_fit_clients": "strategy.min-fit-clients",
    "round_timeout": "strategy.round-timeout",
    "server_opt": "strategy.server-opt",
    "server_lr": "strategy.server-lr",
    "max_update_norm": "strategy.max-update-norm",
    "max_update_bytes": "strategy.max-update-bytes",
    "stop_after": "strategy.stop-after",
    "local_steps": "train.local-steps",
    "batch_size": "train.batch-size",
    "lr": "train.lr",
    "max_seq_len": "train.max-seq-len",
    "lora_r": "lora.r",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    "lora_targets": "lora.targets",
    "lora_mode": "lora.mode",
    "density": "compress.density",
    "scope": "compress.scope",
    "quant": "compress.quant",
    "index_coding": "compress.index-coding",
    "support": "compress.support",
    "down_density": "compress.down-density",
    "down_quant": "compress.down-quant",
    "warmup_rounds": "compress.warmup-rounds",
    "eval_every": "eval.every",
    "eval_on": "eval.on",
    "eval_clients": "eval.clients",
    "target_eval_loss": "eval.target-loss",
    "dp_mode": "dp.mode",
    "dp_clip_norm": "dp.clip-norm",
    "dp_noise_multiplier": "dp.noise-multiplier",
    "dp_delta": "dp.delta",
    "dp_target_epsilon": "dp.target-epsilon",
    "secagg": "secagg.mode",
    "secagg_range": "secagg.range",
    "out_dir": "output.dir",
    "client_state_dir": "output.client-state-dir",
    "resume": "output.resume",
    "overwrite": "output.overwrite",
    "fail_prob": "testing.fail-prob",
    "fail_nodes": "testing.fail-nodes",
}
# test-only knobs: read by the fault-injection ClientApp only, never declared by the project's app
TEST_ONLY = ("fail_prob", "fail_nodes")
ATTRIBUTES: dict[str, str] = {key: name for name, key in RUN_KEYS.items()}  # grouped key -> attribute name


def _defaults() -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(FLSettings)}


def app_config(testing: bool = False) -> dict[str, Any]:
    """The ``[tool.flwr.app.config]`` table of an app (flat dotted keys, as Flower flattens it): every
    default; the test-only ``testing.*`` keys only for the fault-injection app (``testing=True``)."""
    defaults = _defaults()
    return {key: defaults[name] for name, key in RUN_KEYS.items() if testing or name not in TEST_ONLY}


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables (``{"lora": {"r": 8}}``, as TOML reads ``[lora]``) as dotted keys (``lora.r``).

    The rule of Flower's ``flwr.common.config.flatten_dict`` (a test keeps them equal), written out
    because importing Flower costs ``fedcogen --help`` most of a second.
    """
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def attribute_for(key: str) -> str:
    """The attribute name of a grouped run-config key (``_`` accepted for ``-``); an unknown key, or a
    flat key from before the grouping, raises :class:`RunConfigError` naming the key to use."""
    name = ATTRIBUTES.get(key.replace("_", "-"))
    if name is not None:
        return name
    old = key.rsplit(".", 1)[-1].replace("-", "_")  # `lora_r`, or `run.lora_r` from an old [run] table
    if old in RUN_KEYS:
        raise RunConfigError(f"run config key '{key}' is now '{RUN_KEYS[old]}' (run-config keys are grouped; "
                             "see [tool.flwr.app.config] in pyproject.toml)")
    raise RunConfigError(f"unknown run config key '{key}' (known: {', '.join(RUN_KEYS.values())})")


def attributes_of(values: Mapping[str, Any]) -> dict[str, Any]:
    """Grouped run-config values (dotted keys or nested tables) by attribute name; see :func:`attribute_for`."""
    return {attribute_for(key): value for key, value in flatten(values).items()}


def coerce(key: str, default: Any, raw: Any) -> Any:
    """``raw`` as the type of ``default``; bools accept true/false/1/0/yes/no only."""
    try:
        if isinstance(default, bool):
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError(text)
        if isinstance(default, int):
            if isinstance(raw, bool) or isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)
            return int(raw) if not isinstance(raw, str) else int(raw.strip())
        if isinstance(default, float):
            if isinstance(raw, bool):
                raise ValueError(raw)
            return float(raw)
        if not isinstance(raw, str | int | float) or isinstance(raw, bool):
            raise ValueError(raw)
        return str(raw)
    except (TypeError, ValueError) as exc:
        expected = "a bool (true/false/1/0/yes/no)" if isinstance(default, bool) else f"a {type(default).__name__}"
        raise RunConfigError(f"run config '{key}' = {raw!r} is not {expected}") from exc


def load_run_config(run_config: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> FLSettings:
    """The one loader: a Flower ``context.run_config`` (plus overrides; grouped keys) -> validated settings.

    ``data_dir`` ``''`` resolves to ``<out_dir>/data`` here so every process of the run (server,
    simulated clients) agrees on one folder.
    """
    settings = FLSettings.from_mapping({**attributes_of(run_config), **attributes_of(overrides or {})})
    if not settings.data_dir:
        settings = settings.replace(data_dir=str(Path(settings.out_dir) / "data"))
    return settings


def field_help(cls: type) -> dict[str, str]:
    """Help text of every field of a dataclass (``field(metadata={"help": ...})``), by name."""
    return {f.name: str(f.metadata.get("help", f.name)) for f in dataclasses.fields(cls)}
