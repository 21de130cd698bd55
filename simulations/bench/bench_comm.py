"""`fedcogen bench comm`: bytes each run needs to reach the quality of converged dense fp32 LoRA FedAvg.

One invocation, one commit (every run's own record is checked before it is read back), in four steps, all
with the real Flower apps, the same data and seeds, and bytes from the server's message ledger:

1. **Learning-rate sweep**, the same for every run family: dense and each variant train with every rate of
   the preset's ``lr_grid`` for ``sweep_rounds`` rounds on the sweep seed; the lowest final validation loss
   picks the family's rate (:func:`fedcogen.simulations.bench.comm_protocol.pick_lr`).
2. **Dense to its plateau** on every seed: run in steps of one evaluation (checkpoint + resume) until the
   plateau rule holds (:func:`~fedcogen.simulations.bench.comm_protocol.plateau_at`) or the round cap,
   which is reported when hit.
3. **Quality levels** from each seed's dense curve: the losses dense reaches after 25 / 50 / 90 / 100 % of
   its total improvement, and its best loss + 1 %.
4. **Every variant** on every seed until its first evaluation at or below that seed's hardest level (or
   its cap); cost-to-target at each level = bytes of every message both ways up to that evaluation
   (down and up apart, and FlowerTune's FitIns + FitRes), ratio = dense / variant on the same seed, then
   the geometric mean over the seeds with a Student-t 95 % interval of the logs.

Outputs in ``out_dir``: ``bench_comm.json`` (everything, with the preset and a provenance record),
``bench_comm.md`` (:mod:`fedcogen.simulations.bench.comm_report`), ``loss_vs_bytes.png`` / ``loss_vs_round.png``
(first seed), one folder per run.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedcogen import results_json
from fedcogen.client.fl.lora_training import plain_peft_train, train_local
from fedcogen.client.fl.node_data import client_id_for, encoded_split
from fedcogen.client.fl.update_compression import compress_update
from fedcogen.lora_adapter import get_adapter, lora_model, lora_spec, set_adapter
from fedcogen.protocols.codecs import sparse_codec as codec
from fedcogen.provenance import RUN_LOCATION_KEYS, check_reusable, code_state, provenance, recorded
from fedcogen.server.fl.fl_outputs import read_metrics
from fedcogen.simulations.bench import comm_protocol as proto
from fedcogen.simulations.bench.comm_config import CommBenchConfig, preset, recipe_settings
from fedcogen.simulations.bench.comm_report import markdown
from fedcogen.simulations.bench.comm_variants import Variant
from fedcogen.simulations.evaluation.plots import plot_runs
from fedcogen.simulations.federation.federation import SimulationConfig, run_federation

TARGETS = {"ratio_at_final_plus_1pct": 300.0, "ratio_at_90pct": 1000.0, "fixed_overhead_share": 0.05,
           "index_bits_over_bound": 1.10}
FED_SB_RATIO = 230.0  # Fed-SB's best reported communication reduction (arXiv 2502.15436)
# settings that say how far a run was taken in this invocation, not what it computes: a run stopped after
# N rounds and resumed is the run of the cap
STEP_KEYS = ("stop_after",)


def base_config(quick: bool, out: Path, engine: str, rounds: int | None = None,
                local_steps: int | None = None) -> dict[str, Any]:
    """The preset's shared recipe as run settings (``fedcogen bench adapters`` trains on the same one)."""
    cfg = preset(quick)
    base = {**recipe_settings(cfg.recipe, engine, out), "lr": cfg.lr_grid[len(cfg.lr_grid) // 2],
            "rounds": int(rounds or cfg.sweep_rounds), "seed": cfg.seeds[0]}
    if local_steps:
        base["local_steps"] = int(local_steps)
    return base


# --------------------------------------------------------------------------- reading a run


def curve(result: dict[str, Any]) -> list[tuple[int, int, float]]:
    """(round, cumulative bytes of every message, validation loss) at every evaluation."""
    return proto.curve(result)


def first_reaching(result: dict[str, Any], loss: float) -> tuple[int, int] | None:
    """(round, cumulative bytes) of the first evaluation at or below ``loss`` (None if none did)."""
    for rnd, cum, lo in curve(result):
        if lo <= loss:
            return rnd, cum
    return None


def bytes_to_reach(result: dict[str, Any], loss: float) -> float | None:
    """Cumulative bytes at which the loss first reached ``loss``, linear between evaluation points."""
    pts = [(b, lo) for _, b, lo in curve(result)]
    if not pts:
        return None
    if pts[0][1] <= loss:
        return float(pts[0][0])
    for (b0, l0), (b1, l1) in zip(pts, pts[1:], strict=False):
        if l1 <= loss:  # every earlier point was above the loss, so it was crossed in here
            return float(b0 + (b1 - b0) * (l0 - loss) / (l0 - l1))
    return None


def matched_loss(dense: dict[str, Any], sparse: dict[str, Any]) -> dict[str, Any]:
    """Bytes each run needed to reach the loss both runs reach (the worse of the two final losses)."""
    target = max(dense["final_eval_loss"], sparse["final_eval_loss"])
    db, sb = bytes_to_reach(dense, target), bytes_to_reach(sparse, target)
    return {"loss": target, "dense_bytes": db, "sparse_bytes": sb,
            "ratio": (db / sb) if db and sb else float("nan")}


def _ledger(result: dict[str, Any]) -> list[dict[str, Any]]:
    return json.loads((Path(result["settings"]["out_dir"]) / "ledger.json").read_text())["entries"]


def _train_round_bytes(entries: list[dict[str, Any]]) -> float:
    per_round: dict[int, int] = {}
    for e in entries:
        if e["phase"] == "train":
            per_round[e["round"]] = per_round.get(e["round"], 0) + e["bytes"]
    return sum(per_round.values()) / max(1, len(per_round))


def overhead(result: dict[str, Any], entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Fixed per-message overhead vs a typical upload, from the run's own train replies.

    Envelope = serialized Flower message minus the blob (metadata, record names, metrics), measured
    per message; the blob's fixed header is the format's constant; record headers are measured on a
    blob the client code makes for the run's adapter schema and settings.
    """
    ups = [e for e in entries if e["phase"] == "train" and e["direction"] == "up" and not e["error"]]
    if not ups:
        return {}
    typical = statistics.median(e["bytes"] for e in ups)
    envelope = statistics.median(e["bytes"] - e["payload_bytes"] for e in ups)
    s = SimulationConfig.from_dict(dict(result["settings"])).run
    lm = lora_model(s.model, s.seed, lora_spec(s), s.device)
    rng = np.random.default_rng(0)
    fake = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in lm.initial.items()}
    schema = codec.TensorSchema.from_shapes(lm.shapes())
    blob, _ = compress_update(fake, None, s, rng, schema, server_round=s.warmup_rounds + 1)
    stats = codec.blob_stats(blob, schema)
    fixed = envelope + stats["fixed_bytes"]
    value_bits = sum(t["value_bits"] for t in stats["tensors"])
    sent = sum(t["k"] for t in stats["tensors"])
    return {"typical_upload_bytes": typical, "envelope_bytes": envelope, "blob_fixed_bytes": stats["fixed_bytes"],
            "fixed_bytes": fixed, "fixed_share": fixed / typical, "record_header_bytes": stats["record_header_bytes"],
            "records": len(stats["tensors"]), "record_header_share": stats["record_header_bytes"] / typical,
            "index_bits_over_bound": stats["index_bits_over_bound"],
            "value_bits_per_sent_value": value_bits / sent if sent else None}


def _ab_error(result: dict[str, Any]) -> dict[str, float] | None:
    vals = [r["ab_avg_error_rel_change"] for r in result["rounds"] if "ab_avg_error_rel_change" in r]
    if not vals:
        return None
    return {"mean": float(np.mean(vals)), "max": float(np.max(vals)), "per_round": vals}


def measure_throughput(base: dict[str, Any], repeats: int = 5, steps: int = 6) -> dict[str, Any]:
    """Tokens/s of ``train_local`` vs a plain PEFT loop on the same batches, interleaved, same process."""
    cfg = SimulationConfig.from_dict({**base, "out_dir": str(Path(base["data_dir"]).parent / "throughput")})
    s = cfg.settings()
    lm = lora_model(s.model, s.seed, lora_spec(s), s.device)
    data = encoded_split(s, client_id_for(s, 0), "train", lm.tokenizer)
    start = get_adapter(lm)
    ours, plain = [], []
    kw = dict(steps=steps, batch_size=s.batch_size, lr=s.lr, seed=123)
    set_adapter(lm, start)
    train_local(lm, data, **kw)  # warm-up (allocator, kernels)
    for _ in range(repeats):
        set_adapter(lm, start)
        ours.append(train_local(lm, data, **kw).tokens_per_s)
        set_adapter(lm, start)
        plain.append(plain_peft_train(lm, data, **kw).tokens_per_s)
    set_adapter(lm, start)
    mo, mp = statistics.median(ours), statistics.median(plain)
    return {"ours_tokens_per_s": mo, "plain_peft_tokens_per_s": mp, "ratio": mo / mp if mp else float("nan"),
            "repeats": repeats, "steps": steps}


# --------------------------------------------------------------------------- running (and reusing) runs


def reusable(done: Path, cfg: dict[str, Any], force_reuse: bool = False) -> dict[str, Any]:
    """The finished run recorded in ``done`` (a ``metrics.json``) if this commit, from a clean tree, with these
    settings and seed would make it; :class:`fedcogen.provenance.ReuseRefused` names the difference otherwise
    (``force_reuse`` prints the differences and reads it back anyway). How far the run was taken
    (``stop_after``) is not compared: a run stopped early is continued, not reused as finished."""
    s = SimulationConfig.from_dict({**cfg, "overwrite": True}).settings()
    now = provenance(settings=s.to_config(), seeds={"seed": s.seed})
    differences = check_reusable(recorded(done), now, ignore=(*RUN_LOCATION_KEYS, *STEP_KEYS), force=force_reuse,
                                 what=f"the finished run in {done.parent}",
                                 hint="delete that folder, use another --out-dir, or pass --force-reuse")
    for d in differences:
        print(f"[bench comm]   FORCED reuse despite: {d}", flush=True)
    return read_metrics(done)


def _run(cfg: dict[str, Any], reuse: bool, force_reuse: bool = False) -> dict[str, Any]:
    """Run one federation, or with ``reuse`` read back the finished run in its folder (:func:`reusable`)."""
    sim = SimulationConfig.from_dict({**cfg, "overwrite": True})  # the benchmark owns its run folders
    done = Path(sim.run.out_dir) / "metrics.json"
    if (reuse or force_reuse) and done.is_file():
        result = reusable(done, cfg, force_reuse)
        print(f"[bench comm]   reusing the finished run in {done.parent}", flush=True)
        return result
    return run_federation(sim)


def run_to_plateau(cfg: dict[str, Any], bench: CommBenchConfig, reuse: bool,
                   force_reuse: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """Dense until :func:`comm_protocol.plateau_at` holds or ``cfg['rounds']`` (the cap): one evaluation at a
    time, each step a resume of the checkpointed run. Returns (metrics, plateau record)."""
    every = int(cfg.get("eval_every", 1))
    cap = int(cfg["rounds"])
    done = Path(cfg["out_dir"]) / "metrics.json"
    result = None
    if (reuse or force_reuse) and done.is_file():
        result = reusable(done, cfg, force_reuse)
        print(f"[bench comm]   continuing the run in {done.parent} (round {result['completed_rounds']})", flush=True)
    n = min(cap, bench.plateau_window * every)
    while True:
        if result is not None:
            pts = proto.curve(result)
            at = proto.plateau_at([lo for _, _, lo in pts], bench.plateau_window, bench.plateau_min_gain)
            ran = int(result["completed_rounds"])
            if at is not None or ran >= cap:
                return result, {"reached": at is not None, "round": pts[at][0] if at is not None else None,
                                "evaluation": at, "capped": at is None, "cap": cap, "rounds_run": ran,
                                "window": bench.plateau_window, "min_gain": bench.plateau_min_gain}
            n = min(cap, max(n, ran + every))
        resume = result is not None
        sim = SimulationConfig.from_dict({**cfg, "stop_after": n, "resume": resume, "overwrite": not resume})
        result = run_federation(sim)


def _costs(pts: list[tuple[int, int, float]], entries: list[dict[str, Any]],
           levels: list[proto.Level]) -> dict[str, dict[str, Any]]:
    return {lv.name: proto.cost_at(pts, entries, lv) for lv in levels}


def _ratios(dense: dict[str, dict[str, Any]], run: dict[str, dict[str, Any]], key: str) -> dict[str, float | None]:
    """dense bytes / run bytes (of ``key``: all or flowertune) at each level both reached; None otherwise."""
    return {name: proto.ratio_at(dense[name], c, key) for name, c in run.items()}


def summarise_family(name: str, help_: str, lr: float, seeds: list[dict[str, Any]], level_names: list[str]) -> dict[str, Any]:
    """Per level over seeds: how many reached it, bytes (all / down / up / FlowerTune) and ratios with intervals."""
    per_level = {}
    for lv in level_names:
        hits = [s["costs"][lv] for s in seeds if s["costs"][lv]["reached"]]
        per_level[lv] = {
            "reached": len(hits), "of": len(seeds),
            "round": proto.interval([h["round"] for h in hits]),
            **{f"bytes_{k}": proto.interval([h["bytes"][k] for h in hits])
               for k in ("all", "down", "up", "flowertune")},
            "ratio": proto.interval([s["ratio"][lv] for s in seeds if s["ratio"].get(lv) is not None], log=True),
            "ratio_flowertune": proto.interval([s["ratio_flowertune"][lv] for s in seeds
                                                if s["ratio_flowertune"].get(lv) is not None], log=True),
        }
    return {"name": name, "help": help_, "lr": lr, "levels": per_level, "seeds": seeds}


def _seed_record(seed: int, result: dict[str, Any], costs: dict[str, Any], dense_costs: dict[str, Any] | None,
                 cap: int) -> dict[str, Any]:
    pts = proto.curve(result)
    rec = {"seed": seed, "rounds_run": result["completed_rounds"], "cap": cap, "final_eval_loss": result["final_eval_loss"],
           "best_eval_loss": min(lo for _, _, lo in pts), "total_bytes": result["bytes"]["all"],
           "bytes_down": result["bytes"]["down"], "bytes_up": result["bytes"]["up"], "curve": pts, "costs": costs,
           "ab_averaging_error": _ab_error(result), "rejected": result["rejected_total"]}
    dc = dense_costs if dense_costs is not None else costs
    rec["ratio"] = _ratios(dc, costs, "all")
    rec["ratio_flowertune"] = _ratios(dc, costs, "flowertune")
    return rec


# --------------------------------------------------------------------------- the benchmark


def sweep(bench: CommBenchConfig, base: dict[str, Any], families: list[Variant], out: Path, reuse: bool,
          force_reuse: bool) -> dict[str, dict[str, Any]]:
    """Every family at every rate of the grid for ``sweep_rounds`` rounds on the sweep seed; its rate = lowest loss."""
    picked = {}
    for fam in families:
        finals: dict[float, float] = {}
        if len(bench.lr_grid) > 1:
            for lr in bench.lr_grid:
                print(f"[bench comm] sweep {fam.name} lr {lr:g}: {bench.sweep_rounds} rounds", flush=True)
                cfg = {**fam.settings(base, lr), "seed": bench.sweep_seed, "rounds": bench.sweep_rounds,
                       "out_dir": str(out / "sweep" / fam.name / f"lr{lr:g}")}
                pts = proto.curve(_run(cfg, reuse, force_reuse))
                finals[lr] = pts[-1][2] if pts else math.inf
        best = proto.pick_lr(finals) if finals else bench.lr_grid[0]
        picked[fam.name] = {"lr": best, "final_eval_loss_by_lr": {f"{lr:g}": lo for lr, lo in finals.items()},
                            "at_grid_edge": len(bench.lr_grid) > 1 and best in (min(bench.lr_grid), max(bench.lr_grid))}
    return picked


def run_bench(config: CommBenchConfig | None = None, *, quick: bool = False, out_dir: str = "runs/bench_comm",
              engine: str = "loopback", reuse: bool = False, force_reuse: bool = False,
              throughput: bool = False) -> dict[str, Any]:
    """Sweep, dense to its plateau, every variant on every seed; the JSON-able result (also written to out_dir)."""
    bench = config or preset(quick)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started, code_started = time.perf_counter(), code_state()  # the code this run imported
    base = recipe_settings(bench.recipe, engine, out)
    dense_v, chosen = bench.dense(), bench.chosen()
    families = [dense_v, *chosen]
    lrs = sweep(bench, base, families, out, reuse, force_reuse)

    dense_seeds, dense_runs, seed_levels = [], {}, {}
    for seed in bench.seeds:
        print(f"[bench comm] dense seed {seed}: lr {lrs['dense']['lr']:g} until plateau or {bench.dense_max_rounds} "
              "rounds", flush=True)
        cfg = {**dense_v.settings(base, lrs["dense"]["lr"]), "seed": seed, "rounds": bench.dense_max_rounds,
               "out_dir": str(out / "dense" / f"seed{seed}")}
        res, plateau = run_to_plateau(cfg, bench, reuse, force_reuse)
        pts = proto.curve(res)
        levels = proto.quality_levels(pts[0][2], min(lo for _, _, lo in pts), bench.levels)
        seed_levels[seed] = levels
        costs = _costs(pts, _ledger(res), levels)
        rec = _seed_record(seed, res, costs, None, bench.dense_max_rounds)
        rec["plateau"] = plateau
        rec["levels"] = {lv.name: lv.loss for lv in levels}
        gain = pts[0][2] - rec["best_eval_loss"]  # each level as the share of dense's improvement it asks for
        rec["level_share_of_improvement"] = {lv.name: (pts[0][2] - lv.loss) / gain for lv in levels}
        dense_seeds.append(rec)
        dense_runs[seed] = res
    level_names = [lv.name for lv in seed_levels[bench.seeds[0]]]
    rows = [summarise_family("dense", dense_v.help, lrs["dense"]["lr"], dense_seeds, level_names)]
    plots = [("dense fp32", dense_runs[bench.seeds[0]])]
    overheads = {}
    for v in chosen:
        cap = v.max_rounds or bench.variant_max_rounds
        seeds = []
        for seed, dense_rec in zip(bench.seeds, dense_seeds, strict=True):
            hardest = min(lv.loss for lv in seed_levels[seed])
            print(f"[bench comm] {v.name} seed {seed}: lr {lrs[v.name]['lr']:g} until eval loss <= {hardest:.4f} "
                  f"or {cap} rounds", flush=True)
            cfg = {**v.settings(base, lrs[v.name]["lr"]), "seed": seed, "rounds": cap, "target_eval_loss": hardest,
                   "out_dir": str(out / v.name / f"seed{seed}")}
            res = _run(cfg, reuse, force_reuse)
            entries = _ledger(res)
            seeds.append(_seed_record(seed, res, _costs(proto.curve(res), entries, seed_levels[seed]),
                                      dense_rec["costs"], cap))
            if seed == bench.seeds[0]:
                plots.append((v.name, res))
                overheads[v.name] = overhead(res, entries)
        rows.append(summarise_family(v.name, v.help, lrs[v.name]["lr"], seeds, level_names))

    final_level = level_names[-1]
    level_90 = next((n for n in level_names if n == "90%"), None)
    head = _best(rows[1:], final_level)
    head90 = _best(rows[1:], level_90) if level_90 else None
    fixed_shares = [o["fixed_share"] for o in overheads.values() if o]
    idx = [o["index_bits_over_bound"] for o in overheads.values()
           if o and math.isfinite(o["index_bits_over_bound"])]
    dense_final = proto.interval([s["best_eval_loss"] for s in dense_seeds])
    result = {
        "model": bench.recipe.get("model"),
        "engine": engine,
        "preset": bench.to_dict(),
        "learning_rates": lrs,
        "level_names": level_names,
        "dense_plateau": [s["plateau"] for s in dense_seeds],
        "runs": rows,
        "overhead": overheads,
        "byte_definition": BYTE_DEFINITION,
        "best": head["name"] if head else None,
        "best_ratio": head["levels"][final_level]["ratio"]["mean"] if head else None,
        "best_at_90pct": head90["name"] if head90 else None,
        "best_ratio_at_90pct": head90["levels"][level_90]["ratio"]["mean"] if head90 else None,
        # the keys `fedcogen bench all`'s headline table reads
        "dense_eval_loss": dense_final["mean"],
        "target_eval_loss": statistics.fmean(s["levels"][final_level] for s in dense_seeds),
        "dense_bytes_to_target": rows[0]["levels"][final_level]["bytes_all"]["mean"],
        "fed_sb_ratio": FED_SB_RATIO,
        "targets": TARGETS,
        "meets": {
            "ratio_at_final_plus_1pct": _meets(head, final_level, TARGETS["ratio_at_final_plus_1pct"]),
            "ratio_at_90pct": _meets(head90, level_90, TARGETS["ratio_at_90pct"]) if level_90 else None,
            "fixed_overhead_share": (max(fixed_shares) <= TARGETS["fixed_overhead_share"]) if fixed_shares else None,
            "index_bits_over_bound": max(idx) <= TARGETS["index_bits_over_bound"] if idx else None,
        },
        "throughput": measure_throughput({**base, "lr": lrs["dense"]["lr"], "seed": bench.seeds[0]}) if throughput else None,
        "seconds": time.perf_counter() - started,
        "provenance": provenance(settings={**bench.to_dict(), "engine": engine},
                                 seeds={"seeds": list(bench.seeds), "sweep_seed": bench.sweep_seed},
                                 started=code_started),
    }
    plot_runs(plots, out, target_loss=seed_levels[bench.seeds[0]][-1].loss)
    (out / "bench_comm.md").write_text(markdown(result))
    results_json.write(out / "bench_comm.json", result, default=str)
    return result


BYTE_DEFINITION = (
    "bytes = serialized Flower messages of every kind both ways (query, train and evaluate: FitIns/FitRes and "
    "EvaluateIns/EvaluateRes in Flower's old terms, broadcast patches and catch-up chains inside them), summed from "
    "the start up to and including the round of the run's first evaluation at or below the level; "
    "FlowerTune's definition (examples/flowertune-llm: FitIns + FitRes summed over rounds) counts the train "
    "messages only and is given beside it")


def _best(rows: list[dict[str, Any]], level: str | None) -> dict[str, Any] | None:
    """The variant with the highest mean ratio at ``level`` among those that reached it on every seed."""
    full = [r for r in rows if level and r["levels"][level]["reached"] == r["levels"][level]["of"]
            and r["levels"][level]["ratio"]["mean"] is not None]
    return max(full, key=lambda r: r["levels"][level]["ratio"]["mean"]) if full else None


def _meets(row: dict[str, Any] | None, level: str | None, target: float) -> bool | None:
    """Met only when the interval's lower end clears the target; None when no variant reached the level."""
    if row is None or level is None:
        return None
    r = row["levels"][level]["ratio"]
    return (r["lo"] if r["lo"] is not None else r["mean"]) >= target


__all__ = ["run_bench", "run_to_plateau", "reusable", "sweep", "summarise_family", "measure_throughput",
           "base_config", "bytes_to_reach", "matched_loss", "first_reaching", "BYTE_DEFINITION", "TARGETS"]
