"""`fedcogen bench comm`: bytes each run needs to reach dense fp32 LoRA FedAvg's quality, measured.

What is run (the real Flower apps, same data and seeds for every run; bytes from the message ledger):

1. **dense**: fp32 LoRA FedAvg (A and B, whole adapter both ways) for ``rounds`` rounds. Its final
   validation loss L sets the target ``L * 1.01`` (within 1 %).
2. every **variant** (:mod:`fedcogen.simulations.bench.comm_variants`): runs until an evaluation reaches the
   target (``target_eval_loss``) or ``max_rounds`` (the cap, reported), whichever comes first.

What is reported:

* ``bytes_to_target``: cumulative bytes of every message (query, train and evaluate, both ways,
  broadcast deltas and catch-ups) up to the first evaluation at or below the target: what the run
  really spent. Dense's own figure is taken the same way. ``ratio`` = dense / variant, only for runs
  that reached the target; a run that did not gets no ratio, only its loss gap at the cap.
* the curve of validation loss against cumulative bytes for every run (JSON + ``loss_vs_bytes.png``);
* ``per_round_ratio``: dense / variant bytes of the training messages per round (context only: it
  hides slower learning, so it is never called "met");
* per-message overhead: Flower envelope (serialized message minus blob) and the blob's fixed header,
  against the median upload; record headers of the blob (position, k, mode, quantisation parameters);
* for runs that average A and B apart (``lora_mode = lora``): the per-round relative error
  ||mean(B) mean(A) - mean(B A)|| / ||round change||, measured by the server on the real updates.
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
from fedcogen.provenance import RUN_LOCATION_KEYS, check_reusable, provenance, recorded
from fedcogen.server.fl.fl_outputs import read_metrics
from fedcogen.simulations.bench.comm_variants import DENSE, Variant, pick
from fedcogen.simulations.evaluation.plots import plot_runs
from fedcogen.simulations.evaluation.report import comm_report, met_word
from fedcogen.simulations.federation.federation import SimulationConfig, run_federation

TARGETS = {"total_bytes_ratio": 300.0, "eval_loss_rel_gap": 0.01, "fixed_overhead_share": 0.05,
           "index_bits_over_bound": 1.10, "train_throughput_ratio": 0.95}
FED_SB_RATIO = 230.0  # Fed-SB's best reported communication reduction (arXiv 2502.15436)


def base_config(quick: bool, out: Path, engine: str, rounds: int | None = None,
                local_steps: int | None = None) -> dict[str, Any]:
    """The shared recipe. Data folders are named by their user count, so quick and full runs never clash."""
    if quick:
        base = dict(model="tiny", num_clients=4, clients_per_round=2, rounds=6, local_steps=6, batch_size=4,
                    max_seq_len=64, lr=2e-2, eval_every=2, seed=0)  # a random model: lr high enough to move
    else:  # the demo's personalisation recipe (simulations/demo/demo.py) on the embedded 30-layer model
        base = dict(model="smollm2", num_clients=4, clients_per_round=2, rounds=6, local_steps=6, batch_size=4,
                    max_seq_len=320, lr=3e-3, lora_r=16, lora_alpha=32, lora_dropout=0.0,
                    lora_targets="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", eval_every=2, seed=0)
    if rounds:
        base["rounds"] = int(rounds)
    if local_steps:
        base["local_steps"] = int(local_steps)
    return {**base, "engine": engine, "data_dir": str(out / f"data-{base['num_clients']}users")}


# --------------------------------------------------------------------------- reading a run


def curve(result: dict[str, Any]) -> list[tuple[int, int, float]]:
    """(round, cumulative bytes of every message, validation loss) at every evaluation."""
    return [(int(r.get("round", i)), int(r["cum_bytes"]), float(r["eval_loss"])) for i, r in enumerate(result["rounds"])
            if isinstance(r.get("eval_loss"), float) and math.isfinite(r["eval_loss"])]


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
    s = SimulationConfig.from_dict({k: v for k, v in result["settings"].items()}).run
    lm = lora_model(s.model, s.seed, lora_spec(s), s.device)
    rng = np.random.default_rng(0)
    fake = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in lm.initial.items()}
    schema = codec.TensorSchema.from_shapes(lm.shapes())
    blob, _ = compress_update(fake, None, s, rng, schema)
    stats = codec.blob_stats(blob, schema)
    fixed = envelope + stats["fixed_bytes"]
    return {"typical_upload_bytes": typical, "envelope_bytes": envelope, "blob_fixed_bytes": stats["fixed_bytes"],
            "fixed_bytes": fixed, "fixed_share": fixed / typical, "record_header_bytes": stats["record_header_bytes"],
            "records": len(stats["tensors"]), "record_header_share": stats["record_header_bytes"] / typical,
            "index_bits_over_bound": stats["index_bits_over_bound"]}


def _ab_error(result: dict[str, Any]) -> dict[str, float] | None:
    vals = [r["ab_avg_error_rel_change"] for r in result["rounds"] if "ab_avg_error_rel_change" in r]
    if not vals:
        return None
    return {"mean": float(np.mean(vals)), "max": float(np.max(vals)), "per_round": vals}


def summarise(name: str, variant: Variant, result: dict[str, Any], target: float, dense: dict[str, Any],
              dense_to_target: int | None, dense_round_bytes: float, cap: int) -> dict[str, Any]:
    entries = _ledger(result)
    hit = first_reaching(result, target)
    round_bytes = _train_round_bytes(entries)
    final = result["final_eval_loss"]
    dense_loss = dense["final_eval_loss"]
    return {
        "name": name,
        "help": variant.help,
        "overrides": {**dict(variant.overrides), "lr": result["settings"]["lr"]},
        "rounds_run": result["completed_rounds"],
        "cap": cap,
        "reached_target": hit is not None,
        "round_reached": hit[0] if hit else None,
        "bytes_to_target": hit[1] if hit else None,
        "ratio": (dense_to_target / hit[1]) if hit and dense_to_target else None,
        "bytes_to_target_interpolated": bytes_to_reach(result, target),
        "total_bytes": result["bytes"]["all"],
        "bytes_per_round": round_bytes,
        "per_round_ratio": dense_round_bytes / round_bytes if round_bytes else float("nan"),
        "final_eval_loss": final,
        "eval_loss_rel_gap": (final - dense_loss) / dense_loss,
        # context for runs that stopped short: both runs' bytes to the loss both reached (interpolated)
        "at_common_loss": matched_loss(dense, result),
        "adapter_params": result["adapter_params"],
        "curve": curve(result),
        "overhead": overhead(result, entries),
        "ab_averaging_error": _ab_error(result),
        "rejected": result["rejected_total"],
    }


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


# --------------------------------------------------------------------------- the benchmark


def _run(cfg: dict[str, Any], reuse: bool, force_reuse: bool = False) -> dict[str, Any]:
    """Run one federation, or with ``reuse`` read back the finished run in its folder: only one made by
    this commit from a clean tree with these settings (:func:`fedcogen.provenance.check_reusable`
    raises otherwise, naming the difference; ``force_reuse`` prints the differences and reuses it)."""
    sim = SimulationConfig.from_dict({**cfg, "overwrite": True})  # the benchmark owns its run folders
    done = Path(sim.run.out_dir) / "metrics.json"
    if (reuse or force_reuse) and done.is_file():
        s = sim.settings()
        now = provenance(settings=s.to_config(), seeds={"seed": s.seed})
        differences = check_reusable(recorded(done), now, ignore=RUN_LOCATION_KEYS, force=force_reuse,
                                     what=f"the finished run in {done.parent}",
                                     hint="delete that folder, use another --out-dir, or pass --force-reuse")
        for d in differences:
            print(f"[bench comm]   FORCED reuse despite: {d}", flush=True)
        print(f"[bench comm]   reusing the finished run in {done.parent}", flush=True)
        return read_metrics(done)
    return run_federation(sim)


def run_bench(quick: bool = True, out_dir: str = "runs/bench_comm", variants: str | None = None,
              engine: str = "loopback", rounds: int | None = None, max_rounds: int | None = None,
              local_steps: int | None = None, throughput: bool | None = None, reuse: bool = False,
              force_reuse: bool = False) -> dict[str, Any]:
    """Dense run, then every variant until it reaches dense's loss (+1 %) or the cap; the JSON-able result.

    ``reuse``: runs whose folder already holds a finished run are read back instead of run again (so an
    interrupted benchmark continues where it stopped), but only runs made by this commit from a clean
    tree with identical settings; any other stops the benchmark naming the difference, so one table
    never mixes code versions. ``force_reuse`` reads them back anyway, printing the differences."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = base_config(quick, out, engine, rounds, local_steps)
    chosen = pick(variants, quick)
    cap = int(max_rounds or 3 * base["rounds"])
    started = time.perf_counter()
    print(f"[bench comm] dense fp32 LoRA FedAvg: {base['rounds']} rounds, model {base['model']}", flush=True)
    dense = _run({**DENSE.settings(base), "out_dir": str(out / "dense")}, reuse, force_reuse)
    dense_loss = dense["final_eval_loss"]
    target = dense_loss * (1 + TARGETS["eval_loss_rel_gap"])
    dense_hit = first_reaching(dense, target)
    dense_to_target = dense_hit[1] if dense_hit else None
    dense_round_bytes = _train_round_bytes(_ledger(dense))
    runs = [("dense fp32", dense)]
    rows = [summarise("dense", DENSE, dense, target, dense, dense_to_target, dense_round_bytes, base["rounds"])]
    for v in chosen:
        v_cap = v.max_rounds or cap
        print(f"[bench comm] {v.name}: until eval loss <= {target:.4f} or {v_cap} rounds", flush=True)
        cfg = {**v.settings(base), "rounds": v_cap, "target_eval_loss": target, "out_dir": str(out / v.name)}
        res = _run(cfg, reuse, force_reuse)
        runs.append((v.name, res))
        rows.append(summarise(v.name, v, res, target, dense, dense_to_target, dense_round_bytes, v_cap))
    reached = [r for r in rows[1:] if r["reached_target"]]
    head = max(reached, key=lambda r: r["ratio"]) if reached else None
    thr = None
    if throughput if throughput is not None else quick:
        print("[bench comm] training throughput: ours vs plain PEFT loop", flush=True)
        thr = measure_throughput(base, repeats=5 if quick else 2)
    fixed_shares = [r["overhead"]["fixed_share"] for r in rows[1:] if r["overhead"]]
    idx = [r["overhead"]["index_bits_over_bound"] for r in rows[1:]
           if r["overhead"] and math.isfinite(r["overhead"]["index_bits_over_bound"])]
    result = {
        "quick": quick,
        "model": base["model"],
        "engine": engine,
        "config": {k: v for k, v in base.items() if k != "data_dir"},
        "max_rounds": cap,
        "initial_eval_loss": dense["rounds"][0]["eval_loss"],
        "dense_eval_loss": dense_loss,
        "target_eval_loss": target,
        "dense_total_bytes": dense["bytes"]["all"],
        "dense_bytes_to_target": dense_to_target,
        "dense_bytes_per_round": dense_round_bytes,
        "runs": rows,
        "best": head["name"] if head else None,
        "best_ratio": head["ratio"] if head else None,
        "fed_sb_ratio": FED_SB_RATIO,
        "throughput": thr,
        "targets": TARGETS,
        "meets": {
            "total_bytes_ratio_at_matched_loss": bool(head and head["ratio"] >= TARGETS["total_bytes_ratio"]),
            "beats_fed_sb": bool(head and head["ratio"] > FED_SB_RATIO),
            "fixed_overhead_share": bool(fixed_shares) and max(fixed_shares) <= TARGETS["fixed_overhead_share"],
            # None (n/a) when no run sent indices (every entry sent): nothing to judge
            "index_bits_over_bound": max(idx) <= TARGETS["index_bits_over_bound"] if idx else None,
            **({"train_throughput_ratio": thr["ratio"] >= TARGETS["train_throughput_ratio"]} if thr else {}),
        },
        "seconds": time.perf_counter() - started,
        "provenance": provenance(settings={**base, "variants": [v.name for v in chosen], "max_rounds": cap,
                                           "reuse": reuse, "force_reuse": force_reuse},
                                 seeds={"seed": base["seed"]}),
    }
    plot_runs(runs, out, target_loss=target)
    (out / "bench_comm.md").write_text(comm_report(result))
    results_json.write(out / "bench_comm.json", result, default=str)
    return result


def print_table(r: dict[str, Any]) -> None:
    print()
    print(f"target: eval loss <= {r['target_eval_loss']:.4f} (dense final {r['dense_eval_loss']:.4f} + 1 %), "
          f"cap {r['max_rounds']} rounds")
    print(f"{'run':<18}{'rounds':>7}{'reached':>9}{'bytes to target':>17}{'ratio':>9}{'per-rnd':>9}"
          f"{'final loss':>11}{'gap':>9}{'fixed ovh':>10}")
    for x in r["runs"]:
        bt = f"{x['bytes_to_target']:,}" if x["bytes_to_target"] else "-"
        ratio = f"{x['ratio']:.1f}x" if x["ratio"] else ("1.0x" if x["name"] == "dense" else "-")
        ovh = f"{100 * x['overhead']['fixed_share']:.1f}%" if x["overhead"] else "-"
        print(f"{x['name']:<18}{x['rounds_run']:>7}{'yes' if x['reached_target'] else 'NO':>9}{bt:>17}{ratio:>9}"
              f"{x['per_round_ratio']:>8.1f}x{x['final_eval_loss']:>11.4f}{100 * x['eval_loss_rel_gap']:>+8.2f}%"
              f"{ovh:>10}")
    print("ratio = dense bytes / run bytes to reach the target, every message both ways; '-' = not reached")
    if r["throughput"]:
        print(f"\ntrain throughput ratio (ours / plain PEFT): {r['throughput']['ratio']:.3f}")
    print("targets: " + ", ".join(f"{k}={met_word(v)}" for k, v in r["meets"].items()))


__all__ = ["run_bench", "measure_throughput", "print_table", "bytes_to_reach", "matched_loss"]
