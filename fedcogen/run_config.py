"""The run configuration of a federated sparse-LoRA run: one dataclass, one loader.

Why one place: the same settings reach the ServerApp from ``flwr run .`` (pyproject
``[tool.flwr.app.config]`` plus ``--run-config`` overrides), from ``fedcogen simulate`` (flags and
config files) and from experiment configs (privacy, secure aggregation, demo) that *hold* an
:class:`FLSettings` instead of copying its fields. Defaults, ranges, enums and the help text of
every knob live here; a test checks pyproject's table equals :class:`FLSettings` defaults, and the
CLI builds its flags from the field metadata.

Strictness: :meth:`FLSettings.from_mapping` rejects unknown keys and malformed values with an error
naming the key, so a typo in ``--run-config`` fails before a round runs instead of silently
training on a default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcogen.accelerator import SETTINGS_HELP, DeviceError, check_setting
from fedcogen.protocols.fl_messages import SchemaError

SCOPES = ("per_tensor", "global")
QUANTS = ("fp32", "fp16", "int8", "int4", "sign1")
LORA_MODES = ("lora", "freeze_a", "core", "core_rand")  # fedcogen.lora_exact (kept equal by a test)
INDEX_CODINGS = ("auto", "bitmap", "delta_varint", "rice")
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
    """Every knob of a federated run, as flat run-config keys (``[tool.flwr.app.config]``).

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
                raise RunConfigError(f"unknown run config key '{raw_key}' (known: {', '.join(sorted(names))})")
            kwargs[key] = coerce(key, names[key].default, raw)
        return cls(**kwargs)

    def to_config(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

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
        if self.down_density > 0:
            return min(1.0, self.down_density)
        return min(1.0, self.density * max(1, self.clients_per_round))

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
    "index_coding", "dp_mode", "dp_clip_norm", "dp_noise_multiplier", "dp_delta", "client_state_dir",
    "fail_prob", "fail_nodes", "history_examples", "fact_swaps", "secagg", "secagg_range", "device",
)


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
    """The one loader: a Flower ``context.run_config`` (plus overrides) -> validated settings.

    ``data_dir`` ``''`` resolves to ``<out_dir>/data`` here so every process of the run (server,
    simulated clients) agrees on one folder.
    """
    settings = FLSettings.from_mapping({**dict(run_config), **dict(overrides or {})})
    if not settings.data_dir:
        settings = settings.replace(data_dir=str(Path(settings.out_dir) / "data"))
    return settings


def field_help(cls: type) -> dict[str, str]:
    """Help text of every field of a dataclass (``field(metadata={"help": ...})``), by name."""
    return {f.name: str(f.metadata.get("help", f.name)) for f in dataclasses.fields(cls)}
