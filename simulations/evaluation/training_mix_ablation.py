"""Training-mix ablation (issue 26 item 2): which parts of the rich federation's training mix carry the gain.

An experiment is a config file (``simulations/evaluation/ablations/*.toml``, as PEFT's method comparison keeps
its experiments as data): a shared base (the federation's :class:`~fedcogen.dataset.FederationConfig` fields
under ``[data]``, the federated run's grouped run-config keys under ``[run]``, evaluation settings under
``[eval]``) and arms (``[arms.NAME]``), each a table of overrides on that base. Per arm, in the file's order:
generate its federation, train with the library function ``fedcogen simulate`` uses (loopback engine: the same
Flower apps in this process), export the adapter, and answer the *same* fixed tasks with the personalised
device: (a) a foreign-format set written apart from the generator and (b) the unseen users of the baseline
arm's federation (never trained in any arm). The base device answers them once.

Why one invocation: every arm then runs from one commit on one machine with one seed, and the report's paired
per-user differences (arm minus baseline, users resampled) compare like with like. The result file is
rewritten after every arm, so a run stopped early still reports the arms it finished.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcogen import results_json
from fedcogen.config_file import read_config_file
from fedcogen.dataset import (
    FederationConfig,
    generate_federation,
    names_and_places,
    user_ids,
    validate_task_file,
    write_federation,
)
from fedcogen.provenance import provenance
from fedcogen.run_config import FLSettings, RunConfigError, attributes_of
from fedcogen.simulations.evaluation.cogen_generator import CogenGenerator
from fedcogen.simulations.evaluation.compare_runs import compare_runs
from fedcogen.simulations.evaluation.evaluate import EvalConfig, evaluate, group_summaries
from fedcogen.simulations.federation.federation import SimulationConfig, export_adapter, run_federation
from fedcogen.variants import PERSONALISED_VARIANT

BASE_VARIANT = "device"
FOREIGN_SET, UNSEEN_SET = "foreign", "unseen_users"
# what the report compares: quality, personalisation, and invented names / places (lower is better)
COMPARED: tuple[str, ...] = ("rouge_l", "fact_recall", "foreign_facts")
TOP_KEYS = ("ablation", "data", "run", "eval", "arms")
ARM_KEYS = ("data", "run")


class AblationConfigError(ValueError):
    """The ablation config is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class EvalSettings:
    """How every arm is evaluated (``[eval]``). ``foreign_set`` is read relative to the working directory."""

    foreign_set: str = "simulations/evaluation/foreign_sets/cogenesis.jsonl"
    foreign_tasks_per_user: int = 1
    unseen_tasks_per_user: int = 4
    max_new_tokens: int = 96
    batch_size: int = 8
    resamples: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type == "int" and (not isinstance(v, int) or isinstance(v, bool)):
                raise AblationConfigError(f"[eval] {f.name} must be an integer, got {v!r}")
        for name in ("foreign_tasks_per_user", "unseen_tasks_per_user", "max_new_tokens", "batch_size", "resamples"):
            if getattr(self, name) < 1:
                raise AblationConfigError(f"[eval] {name} must be >= 1, got {getattr(self, name)}")
        if not isinstance(self.foreign_set, str) or not self.foreign_set:
            raise AblationConfigError(f"[eval] foreign_set must name a task file, got {self.foreign_set!r}")


@dataclass(frozen=True)
class Arm:
    """One arm: its name, the overrides it was given (for the report) and the resolved settings."""

    name: str
    data: FederationConfig
    run: FLSettings
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class AblationConfig:
    """A parsed ablation file: arms in the file's order, the baseline arm's name, evaluation settings."""

    path: str
    arms: tuple[Arm, ...]
    baseline: str
    eval: EvalSettings

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "baseline": self.baseline, "eval": dataclasses.asdict(self.eval),
                "arms": {a.name: {"overrides": a.overrides, "data": dataclasses.asdict(a.data),
                                  "run": dataclasses.asdict(a.run)} for a in self.arms}}


def _table(values: Any, where: str) -> dict[str, Any]:
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise AblationConfigError(f"{where} must be a table, got {type(values).__name__}")
    return dict(values)


def _federation_config(values: Mapping[str, Any], where: str) -> FederationConfig:
    known = {f.name for f in dataclasses.fields(FederationConfig)}
    for key in values:
        if key not in known:
            raise AblationConfigError(f"{where}: unknown key '{key}' (FederationConfig fields: "
                                      f"{', '.join(sorted(known))})")
    try:
        return FederationConfig(**values)
    except ValueError as exc:
        raise AblationConfigError(f"{where}: {exc}") from exc


def _run_settings(values: Mapping[str, Any], where: str) -> FLSettings:
    try:
        return FLSettings.from_mapping(attributes_of(values))  # typed and range-checked, naming the key
    except (RunConfigError, TypeError, ValueError) as exc:
        raise AblationConfigError(f"{where}: {exc}") from exc


def parse_config(raw: Mapping[str, Any], path: str = "<config>") -> AblationConfig:
    """Check an ablation config (the TOML's tables) and resolve every arm; any problem raises
    :class:`AblationConfigError` naming the file and the key."""
    for key in raw:
        if key not in TOP_KEYS:
            raise AblationConfigError(f"{path}: unknown table '{key}' (known: {', '.join(TOP_KEYS)})")
    head = _table(raw.get("ablation"), f"{path}: [ablation]")
    for key in head:
        if key != "baseline":
            raise AblationConfigError(f"{path}: [ablation] unknown key '{key}' (known: baseline)")
    base_data = _table(raw.get("data"), f"{path}: [data]")
    base_run = _table(raw.get("run"), f"{path}: [run]")
    eval_values = _table(raw.get("eval"), f"{path}: [eval]")
    known_eval = {f.name for f in dataclasses.fields(EvalSettings)}
    for key in eval_values:
        if key not in known_eval:
            raise AblationConfigError(f"{path}: [eval] unknown key '{key}' (known: {', '.join(sorted(known_eval))})")
    try:
        ev = EvalSettings(**eval_values)
    except AblationConfigError as exc:
        raise AblationConfigError(f"{path}: {exc}") from exc
    arms_raw = _table(raw.get("arms"), f"{path}: [arms]")
    if not arms_raw:
        raise AblationConfigError(f"{path}: [arms] is missing or empty: name at least one arm ([arms.NAME])")
    arms = []
    for name, over in arms_raw.items():
        over = _table(over, f"{path}: [arms.{name}]")
        for key in over:
            if key not in ARM_KEYS:
                raise AblationConfigError(f"{path}: [arms.{name}] unknown key '{key}' (an arm overrides "
                                          f"{' and '.join(ARM_KEYS)}, each a table)")
        d = _table(over.get("data"), f"{path}: [arms.{name}] data")
        r = _table(over.get("run"), f"{path}: [arms.{name}] run")
        data = _federation_config({**base_data, **d}, f"{path}: [arms.{name}] data")
        run = _run_settings({**base_run, **r}, f"{path}: [arms.{name}] run")
        if run.num_clients >= data.n_users:
            raise AblationConfigError(
                f"{path}: [arms.{name}]: run 'strategy.num-clients' = {run.num_clients} must be below data "
                f"'n_users' = {data.n_users}: the users past the training clients are the unseen-users set")
        arms.append(Arm(name, data, run, {"data": d, "run": r}))
    baseline = head.get("baseline", arms[0].name)
    if baseline not in arms_raw:
        raise AblationConfigError(f"{path}: [ablation] baseline = {baseline!r} is not an arm "
                                  f"(arms: {', '.join(arms_raw)})")
    return AblationConfig(path, tuple(arms), baseline, ev)


def load_config(path: str | Path) -> AblationConfig:
    """Read and check an ablation file (TOML or JSON)."""
    try:
        raw = read_config_file(path)
    except ValueError as exc:
        raise AblationConfigError(str(exc)) from exc
    return parse_config(raw, str(path))


def select_arms(cfg: AblationConfig, names: Sequence[str] | None) -> tuple[Arm, ...]:
    """The arms to run: all, or those named (in the file's order); an unknown name is an error."""
    if not names:
        return cfg.arms
    known = [a.name for a in cfg.arms]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise AblationConfigError(f"--arms names unknown arm(s) {', '.join(unknown)} (arms: {', '.join(known)})")
    return tuple(a for a in cfg.arms if a.name in names)


# --------------------------------------------------------------------------------------------
# the fixed evaluation sets


def cap_per_user(tasks: Sequence[Any], per_user: int) -> list[Any]:
    """The first ``per_user`` tasks of each user, in file order."""
    seen: dict[str, int] = {}
    out = []
    for t in tasks:
        n = seen.get(str(t.user_id), 0)
        if n < per_user:
            out.append(t)
            seen[str(t.user_id)] = n + 1
    return out


def eval_sets(cfg: AblationConfig, baseline_fed: Any) -> dict[str, list[Any]]:
    """The same tasks for every arm: the foreign set (capped per user) and the test tasks of the baseline
    federation's users past the training clients (they never train in any arm)."""
    path = Path(cfg.eval.foreign_set)
    if not path.is_file():
        raise FileNotFoundError(f"[eval] foreign_set {path} does not exist")
    foreign = cap_per_user(validate_task_file(path), cfg.eval.foreign_tasks_per_user)
    base = cfg.arm(cfg.baseline)
    unseen_users = user_ids(baseline_fed)[base.run.num_clients:]
    unseen = [t for u in unseen_users for t in baseline_fed.tasks_of(u, "test")[: cfg.eval.unseen_tasks_per_user]]
    clash = sorted({str(t.user_id) for t in foreign} & {str(t.user_id) for t in unseen})
    if clash:
        raise ValueError(f"user id {clash[0]} is in the foreign set and among the unseen users: ids must differ")
    if not foreign or not unseen:
        raise ValueError(f"an evaluation set is empty (foreign {len(foreign)} tasks, unseen users {len(unseen)})")
    return {FOREIGN_SET: foreign, UNSEEN_SET: unseen}


# --------------------------------------------------------------------------------------------
# one arm


def _say(msg: str) -> None:
    print(f"[ablation] {msg}", flush=True)


def write_data(fed_cfg: FederationConfig, folder: Path) -> Any:
    """Generate a federation and write it to ``folder`` (replaced)."""
    fed = generate_federation(fed_cfg)
    if folder.exists():
        shutil.rmtree(folder)
    write_federation(fed, folder)
    return fed


def train_arm(arm: Arm, data_dir: Path, run_dir: Path) -> dict[str, Any]:
    """The arm's federated run (``fedcogen simulate``'s library function, loopback engine) and its adapter."""
    run = arm.run.replace(data_dir=str(data_dir), out_dir=str(run_dir), overwrite=True, resume=False)
    result = run_federation(SimulationConfig(run=run, engine="loopback"))
    adapter = export_adapter(run_dir)
    rounds = [r for r in result.get("rounds", []) if int(r.get("round", 0)) >= 1]
    return {
        "adapter": str(adapter),
        "completed_rounds": result.get("completed_rounds"),
        "train_loss_by_round": [r.get("train_loss") for r in rounds],
        "final_train_loss": rounds[-1].get("train_loss") if rounds else None,
        "final_eval_loss": result.get("final_eval_loss"),
        "final_eval_ppl": result.get("final_eval_ppl"),
        "global_adapter_digest": result.get("global_adapter_digest"),
    }


GeneratorFactory = Callable[[Arm, str, EvalSettings], Any]


def real_generator(arm: Arm, adapter: str, ev: EvalSettings) -> Any:
    """The device-side CoGenesis generator: base device plus the arm's personalised copy (no cloud)."""
    return CogenGenerator.create(device_model=arm.run.model, cloud_address=None, adapter=adapter, seed=ev.seed,
                                 personalised=True, device=arm.run.device, max_new_tokens=ev.max_new_tokens)


def evaluate_arm(arm: Arm, adapter: str, sets: Mapping[str, Sequence[Any]], variants: Sequence[str],
                 ev: EvalSettings, make_generator: GeneratorFactory = real_generator) -> dict[str, Any]:
    """Every set's tasks with ``variants`` in one evaluation; per set means, CIs and answer counts."""
    tasks = [t for s in sets.values() for t in s]
    cfg = EvalConfig(resamples=ev.resamples, seed=ev.seed, batch_size=ev.batch_size, progress=False)
    gen = make_generator(arm, adapter, ev)
    try:
        data = evaluate(tasks, gen, list(variants), config=cfg, foreign_terms=names_and_places()).to_dict()
    finally:
        if hasattr(gen, "close"):
            gen.close()
    data["sets"] = group_summaries(data, {k: {str(t.user_id) for t in s} for k, s in sets.items()}, variants, cfg)
    return data


def _ci(d: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not d or d.get("n", 0) == 0 or d.get("mean") is None or math.isnan(d["mean"]):
        return None
    return {k: d[k] for k in ("mean", "low", "high", "n")}


def set_summary(result: Mapping[str, Any], variant: str) -> dict[str, Any]:
    """Per set: the variant's means with 95% intervals over users and its answer counts."""
    return {name: {"users": len(part["users"]), "tasks": part["tasks"],
                   **{k: _ci(part["overall"].get(variant, {}).get(k)) for k in COMPARED},
                   "counts": part["counts"][variant]}
            for name, part in result["sets"].items()}


def paired(a: Mapping[str, Any], va: str, b: Mapping[str, Any], vb: str, ev: EvalSettings) -> dict[str, Any]:
    """Per set and metric: the per-user paired difference a - b with its interval (users resampled)."""
    cfg = EvalConfig(resamples=ev.resamples, seed=ev.seed)
    out = compare_runs(a, va, b, vb, metrics=COMPARED, cfg=cfg)
    return {name: {"users": row["users"], **{k: {**(_ci(row["paired"][k]) or {}), "verdict": verdict(row["paired"][k])}
                                             for k in COMPARED}}
            for name, row in out.items()}


def verdict(ci: Mapping[str, Any]) -> str:
    """``higher`` / ``lower`` when the 95% interval of a difference excludes 0, else ``tie``."""
    if not ci or not ci.get("n"):
        return "n/a"
    if ci["low"] > 0:
        return "higher"
    if ci["high"] < 0:
        return "lower"
    return "tie"


# --------------------------------------------------------------------------------------------
# the whole ablation


def conclusions(result: Mapping[str, Any]) -> list[str]:
    """One sentence per removed part and set: does removing it lower (the part carries gain), raise, or tie."""
    base = result["baseline"]
    out = []
    for name, arm in result["arms"].items():
        if name == base or arm.get("status") != "done":
            continue
        for set_name, row in (arm.get("vs_baseline") or {}).items():
            parts = []
            for metric in ("rouge_l", "fact_recall"):
                d = row[metric]
                if not d.get("n"):
                    continue
                parts.append(f"{metric} {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] ({d['verdict']})")
            if not parts:
                continue
            v = {row[m]["verdict"] for m in ("rouge_l", "fact_recall") if row[m].get("n")}
            if "lower" in v and "higher" not in v:
                gist = f"the part {name} removes carries gain"
            elif "higher" in v and "lower" not in v:
                gist = f"the arm {name} does better without that part"
            elif v == {"tie"}:
                gist = "tie: no measurable effect at this size"
            else:
                gist = "mixed"
            out.append(f"{set_name}: {name} - {base}: " + "; ".join(parts) + f" -> {gist}")
    return out


def run_ablation(cfg: AblationConfig, out_dir: str | Path, json_out: str | Path, *,
                 arms: Sequence[str] | None = None, command_settings: Mapping[str, Any] | None = None,
                 make_generator: GeneratorFactory = real_generator,
                 on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run the arms in order and write ``json_out`` after each one (a partial run still reports).

    ``on_update`` gets the result dict after every write (the CLI writes the markdown report there).
    An arm that fails is recorded with its error and the next arm runs; the caller decides the exit code.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chosen = select_arms(cfg, arms)
    base = cfg.arm(cfg.baseline)
    result: dict[str, Any] = {
        "experiment": "training-mix ablation (issue 26 item 2)",
        "config": cfg.to_dict(), "baseline": cfg.baseline, "variant": PERSONALISED_VARIANT,
        "arms": {a.name: {"status": "pending"} for a in chosen}, "base_device": None, "sets": {},
        "conclusions": [], "seconds": {},
        "provenance": provenance(settings={"config": cfg.to_dict(), **dict(command_settings or {})},
                                 seeds={"data": base.data.seed, "run": base.run.seed, "eval": cfg.eval.seed}),
    }
    started = time.perf_counter()

    def save() -> None:
        result["seconds"]["total"] = round(time.perf_counter() - started, 1)
        result["conclusions"] = conclusions(result)
        results_json.write(Path(json_out), result, indent=2, default=str)
        if on_update is not None:
            on_update(result)

    t = time.perf_counter()
    _say(f"evaluation sets: generating the baseline arm '{base.name}' federation ({base.data.n_users} users, "
         f"seed {base.data.seed}) for its unseen users")
    baseline_fed = generate_federation(base.data)
    sets = eval_sets(cfg, baseline_fed)
    for name, tasks in sets.items():
        users = sorted({str(t.user_id) for t in tasks})
        result["sets"][name] = {"tasks": len(tasks), "users": users,
                                "source": cfg.eval.foreign_set if name == FOREIGN_SET else
                                f"test tasks of the '{base.name}' arm's federation users past the "
                                f"{base.run.num_clients} training clients (never trained in any arm)"}
        _say(f"  {name}: {len(tasks)} tasks of {len(users)} users ({users[0]} .. {users[-1]})")
    result["seconds"]["eval_sets"] = round(time.perf_counter() - t, 1)
    save()
    baseline_eval: dict[str, Any] | None = None
    base_eval: dict[str, Any] | None = None
    for i, arm in enumerate(chosen, 1):
        row: dict[str, Any] = result["arms"][arm.name]
        row.update(status="running", overrides=arm.overrides, seconds={})
        arm_dir = out / "arms" / arm.name
        try:
            t = time.perf_counter()
            _say(f"arm {i}/{len(chosen)} {arm.name}: data ({arm.data.n_users} users, variety {arm.data.variety}, "
                 f"format_variety {arm.data.format_variety}, distractor_facts {arm.data.distractor_facts}, "
                 f"absent_fact_percent {arm.data.absent_fact_percent})")
            fed = write_data(arm.data, arm_dir / "data")
            row["data"] = {"tasks": {s: len(v) for s, v in fed.tasks.items()}}
            row["seconds"]["data"] = round(time.perf_counter() - t, 1)
            t = time.perf_counter()
            _say(f"arm {i}/{len(chosen)} {arm.name}: training {arm.run.model}, {arm.run.rounds} rounds x "
                 f"{arm.run.clients_per_round} of {arm.run.num_clients} clients x {arm.run.local_steps} steps, "
                 f"fact_swaps {arm.run.fact_swaps}")
            row["training"] = train_arm(arm, arm_dir / "data", arm_dir / "federation")
            row["seconds"]["train"] = round(time.perf_counter() - t, 1)
            tr = row["training"]
            _say(f"arm {i}/{len(chosen)} {arm.name}: trained in {row['seconds']['train']:.0f} s, last train loss "
                 f"{_num(tr['final_train_loss'])}, eval loss {_num(tr['final_eval_loss'])}")
            t = time.perf_counter()
            variants = [PERSONALISED_VARIANT] + ([BASE_VARIANT] if base_eval is None else [])
            _say(f"arm {i}/{len(chosen)} {arm.name}: evaluating {', '.join(variants)} on "
                 f"{sum(len(s) for s in sets.values())} tasks")
            ev = evaluate_arm(arm, tr["adapter"], sets, variants, cfg.eval, make_generator)
            results_json.write(arm_dir / "eval.json", ev, indent=2, default=str)
            row["seconds"]["eval"] = round(time.perf_counter() - t, 1)
            if base_eval is None:
                base_eval = ev
                result["base_device"] = {"evaluated_with_arm": arm.name, "sets": set_summary(ev, BASE_VARIANT)}
            row["eval"] = set_summary(ev, PERSONALISED_VARIANT)
            row["vs_base_device"] = paired(ev, PERSONALISED_VARIANT, base_eval, BASE_VARIANT, cfg.eval)
            if arm.name == cfg.baseline:
                baseline_eval = ev
            if baseline_eval is not None and arm.name != cfg.baseline:
                row["vs_baseline"] = paired(ev, PERSONALISED_VARIANT, baseline_eval, PERSONALISED_VARIANT, cfg.eval)
            row["status"] = "done"
            for name, s in row["eval"].items():
                _say(f"arm {i}/{len(chosen)} {arm.name}: {name} ROUGE-L {_fmt(s['rouge_l'])}, "
                     f"fact recall {_fmt(s['fact_recall'])}, foreign facts {_num((s['foreign_facts'] or {}).get('mean'))}")
        except Exception as exc:  # noqa: BLE001 - one failed arm must not lose the others; recorded and reported
            row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            _say(f"arm {i}/{len(chosen)} {arm.name}: FAILED: {row['error']}")
        save()
    return result


def _num(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _fmt(ci: Mapping[str, Any] | None, digits: int = 3) -> str:
    if not ci:
        return "n/a"
    return f"{ci['mean']:.{digits}f} [{ci['low']:.{digits}f}, {ci['high']:.{digits}f}]"


# --------------------------------------------------------------------------------------------
# report


def _diff(d: Mapping[str, Any] | None) -> str:
    if not d or not d.get("n"):
        return "-"
    return f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] {d['verdict']}"


def report_markdown(result: Mapping[str, Any]) -> str:
    """The ablation's markdown report: per set a table of arms (means with 95% intervals over users and
    paired differences vs the baseline arm), training figures, conclusions and how it was made."""
    base = result["baseline"]
    prov = result.get("provenance") or {}
    code = prov.get("code") or {}
    lines = ["# Training-mix ablation (issue 26 item 2)", "",
             f"Command: `{prov.get('command', '?')}`  ",
             f"Commit: `{code.get('commit', '?')}`{' (dirty)' if code.get('dirty') else ''}, "
             f"{prov.get('date_utc', '?')}, machine {prov.get('machine', {}).get('cores', '?')} cores  ",
             f"Config: `{result['config']['path']}`; baseline arm `{base}`; variant `{result['variant']}` "
             "(device + the arm's federated adapter); every arm answers the same tasks; intervals are 95% "
             "bootstrap over users; a difference is `tie` when its interval spans 0.", ""]
    pending = [n for n, a in result["arms"].items() if a.get("status") != "done"]
    if pending:
        states = ", ".join(f"{n} ({result['arms'][n].get('status')})" for n in pending)
        lines += [f"**Not finished: {states}.**", ""]
    bd = (result.get("base_device") or {}).get("sets", {})
    for set_name, meta in result["sets"].items():
        lines += [f"## {set_name}: {meta['tasks']} tasks of {len(meta['users'])} users", "", f"Source: {meta['source']}", "",
                  f"| arm | ROUGE-L | fact recall | foreign facts | ROUGE-L - {base} | fact recall - {base} | "
                  f"foreign facts - {base} |", "|---|---|---|---|---|---|---|"]
        if set_name in bd:
            s = bd[set_name]
            lines.append(f"| base device (no adapter) | {_fmt(s['rouge_l'])} | {_fmt(s['fact_recall'])} | "
                         f"{_fmt(s['foreign_facts'], 2)} | | | |")
        for name, arm in result["arms"].items():
            if arm.get("status") != "done":
                lines.append(f"| {name} | {arm.get('status')} | | | | | |")
                continue
            s = arm["eval"][set_name]
            vs = (arm.get("vs_baseline") or {}).get(set_name, {})
            lines.append(f"| {name} | {_fmt(s['rouge_l'])} | {_fmt(s['fact_recall'])} | {_fmt(s['foreign_facts'], 2)} "
                         f"| {_diff(vs.get('rouge_l'))} | {_diff(vs.get('fact_recall'))} | "
                         f"{_diff(vs.get('foreign_facts'))} |")
        lines += ["", "Personalised minus base device (paired per user):", "",
                  "| arm | ROUGE-L | fact recall | foreign facts |", "|---|---|---|---|"]
        for name, arm in result["arms"].items():
            if arm.get("status") == "done":
                vs = arm["vs_base_device"][set_name]
                lines.append(f"| {name} | {_diff(vs['rouge_l'])} | {_diff(vs['fact_recall'])} | "
                             f"{_diff(vs['foreign_facts'])} |")
        lines.append("")
    lines += ["## Training", "", "| arm | overrides | train loss by round | final eval loss | data s | train s | eval s |",
              "|---|---|---|---|---|---|---|"]
    for name, arm in result["arms"].items():
        tr, sec = arm.get("training") or {}, arm.get("seconds") or {}
        over = "; ".join(f"{k}: {v}" for k, v in (arm.get("overrides") or {}).items() if v) or "-"
        losses = ", ".join(_num(x, 2) for x in tr.get("train_loss_by_round", [])) or "-"
        lines.append(f"| {name} | {over} | {losses} | {_num(tr.get('final_eval_loss'))} | {sec.get('data', '-')} | "
                     f"{sec.get('train', '-')} | {sec.get('eval', '-')} |")
    failed = {n: a["error"] for n, a in result["arms"].items() if a.get("status") == "failed"}
    if failed:
        lines += ["", *[f"- {n} failed: {e}" for n, e in failed.items()]]
    lines += ["", "## Which parts carry the gain", ""]
    lines += [f"- {c}" for c in result.get("conclusions") or []] or ["- no finished arm besides the baseline"]
    lines += ["", f"Total {result['seconds'].get('total', '?')} s.", ""]
    return "\n".join(lines)
