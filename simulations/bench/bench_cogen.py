"""CoGenesis benchmark: speed of every variant side by side, bytes per token vs agreement, cloud batching.

``run_cogen_bench(quick)`` starts a real cloud (``fedcogen cloud serve`` in a child process, plaintext
on loopback so TLS cost is not mixed into model speed) and measures, for every device model:

* **speed side by side** (``speed``): for every task the variants run one after another (the order
  rotating per task, so load drift hits them alike): ``device`` alone, ``logit`` per token
  (``draft_tokens=0``), ``logit`` speculative (the default), ``gated`` (the calibrated gate). Tokens/s,
  ratio to device-only, cloud-call fraction, round trips per token, wire bytes per token both ways
  (the device's wire capture) and ROUGE-L against the references (gated's quality vs always-fuse).
* **bytes per token vs top-1 agreement** (``wire``, ``bench_cogen_wire``): teacher-forced, every
  (encoding, k) point, against fusion with the full fp32 distribution.
* **cloud batching** (``aggregate_tokens_per_s``): n = 1, 2, 4, 8 concurrent cloud-decoding sessions.
* **long context** (``long_context``): tasks whose private context is ~1,500-2,000 tokens, 128 new tokens.

quick: tiny models (seconds). full: smollm2 cloud with the pruned smollm2-24l, smollm2-27l and
smollm2-half devices. Cloud and device get half the cores each (one machine plays both sides); the
machine's other load shows up in every speed figure, which is why only ratios measured side by side
in one run are reported as results.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedcogen import results_json
from fedcogen.accelerator import placement
from fedcogen.client.cogen.cloud_client import CloudClient
from fedcogen.client.cogen.cogen_device import CogenDevice, DeviceConfig
from fedcogen.dataset import FederationConfig, generate_federation
from fedcogen.models import check_model_pair, shared_model
from fedcogen.provenance import provenance
from fedcogen.simulations.bench.bench_cogen_report import cogen_report
from fedcogen.simulations.bench.bench_cogen_wire import best_point, teacher_forced, wire_curve
from fedcogen.simulations.evaluation.metrics import rouge_l_f1
from fedcogen.simulations.federation.processes import spawned_cloud

log = logging.getLogger(__name__)

FALLBACK_TASKS = [
    {
        "instruction": "Write a short email to my manager asking to move our Friday meeting.",
        "private_context": "Manager: Dana Whitcombe. Friday 10:00 one-to-one. I have a dentist appointment.",
        "reference": "Hi Dana, could we move our Friday 10:00 one-to-one? I have a dentist appointment "
        "that morning. Would Thursday afternoon work for you? Thanks!",
    },
    {
        "instruction": "Write a birthday message to my sister.",
        "private_context": "Sister: Mira, turning 30 on Saturday, loves hiking and bad puns.",
        "reference": "Happy 30th, Mira! Wishing you a year full of trails, summits and terrible puns. "
        "Can't wait to celebrate with you on Saturday!",
    },
    {
        "instruction": "Write a note to my landlord about the broken heater.",
        "private_context": "Landlord: Mr. Osei. Flat 4B, heater broken since Monday.",
        "reference": "Dear Mr. Osei, the heater in flat 4B has not worked since Monday. Could you please "
        "arrange a repair this week? Thank you.",
    },
]


@dataclass
class CogenBenchConfig:
    """Sizes of one benchmark run (quick = tiny models, full = SmolLM2)."""

    cloud_model: str = "tiny-large"
    device_models: tuple[str, ...] = ("tiny",)
    weight: float = 0.5
    gen_tokens: int = 24
    n_tasks: int = 3
    agreement_tasks: int = 8
    agreement_max_tokens: int = 64
    sessions: tuple[int, ...] = (1, 2, 4, 8)
    session_tokens: int = 24
    long_tasks: int = 1
    long_tokens: int = 32
    long_chars: int = 7000
    device: str = "auto"  # where both models run (fedcogen.accelerator): the spawned cloud and this process
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_mode(cls, quick: bool) -> CogenBenchConfig:
        if quick:
            return cls()
        return cls(
            cloud_model="smollm2",
            device_models=("smollm2-24l", "smollm2-27l", "smollm2-half"),
            gen_tokens=48,
            n_tasks=4,
            agreement_tasks=16,
            session_tokens=32,
            long_tasks=2,
            long_tokens=128,
        )


def _tasks(n: int, long_chars: int = 0) -> list[dict[str, str]]:
    """Reference tasks: the synthetic federation's test split when available, else built-in ones.
    ``long_chars`` > 0: the user's past texts are appended to the private context up to about that many
    characters (~7,000 = a 1,500-2,000-token device prompt, as in ``fedcogen eval`` with history)."""
    try:
        fed = generate_federation(FederationConfig(n_users=4, seed=0, history_per_user=24 if long_chars else 4,
                                                   train_tasks_per_user=0, val_tasks_per_user=0,
                                                   test_tasks_per_user=4))
        tasks = []
        for t in fed.tasks["test"]:
            ctx = t.private_context
            for h in fed.history_of(t.user_id) if long_chars else []:
                if len(ctx) + len(h.text) > long_chars:
                    break
                ctx += "\n\n" + h.text
            tasks.append({"instruction": t.instruction, "private_context": ctx, "reference": t.reference})
    except Exception as exc:  # noqa: BLE001 - the generator is optional for this benchmark
        log.info("synthetic data unavailable (%s); using built-in reference tasks", exc)
        tasks = []
    tasks = tasks or FALLBACK_TASKS
    return [tasks[i % len(tasks)] for i in range(n)]


#: (name, variant, DeviceConfig overrides) of the side-by-side speed runs
SPEED_VARIANTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("device", "device", {}),
    ("device_cloud_busy", "device", {}),  # the ceiling on one machine: device alone while the cloud computes
    ("logit_per_token", "logit", {"draft_tokens": 0}),
    ("logit_speculative", "logit", {}),
    ("gated", "gated", {}),
)


def _side_by_side(address: str, device_name: str, tasks: list[dict[str, str]], max_new_tokens: int,
                  weight: float, device: str = "cpu") -> dict[str, Any]:
    """Every variant on every task, one after another (rotating order); sums per variant."""
    lm = shared_model(device_name, 0, device)
    devices = {name: CogenDevice(DeviceConfig(device_model=device_name, cloud=address, insecure=True,
                                              max_new_tokens=max_new_tokens, weight=weight, **kw), device_lm=lm)
               for name, _, kw in SPEED_VARIANTS}
    variant_of = {name: v for name, v, _ in SPEED_VARIANTS}
    sums = {name: dict.fromkeys(("tokens", "latency", "sent", "received", "calls", "positions", "round_trips",
                                 "rouge_l", "fell_back"), 0.0) for name in devices}
    try:
        for name, dev in devices.items():  # warm-up (first-call costs out of the figures)
            dev.generate(tasks[0]["instruction"], tasks[0]["private_context"], variant_of[name])
        names = list(devices)
        for i, t in enumerate(tasks):
            for name in names[i % len(names):] + names[: i % len(names)]:
                with _cloud_busy(address, device_name, t) if name == "device_cloud_busy" else contextlib.nullcontext():
                    a = devices[name].generate(t["instruction"], t["private_context"], variant_of[name])
                acc = sums[name]
                acc["tokens"] += a.tokens
                acc["latency"] += a.latency_s
                acc["sent"] += a.bytes_sent
                acc["received"] += a.bytes_received
                acc["calls"] += a.cloud_calls
                acc["positions"] += a.cloud_calls / a.cloud_call_fraction if a.cloud_call_fraction else max(1, a.tokens)
                acc["round_trips"] += a.cloud_round_trips
                acc["rouge_l"] += rouge_l_f1(a.text, t["reference"])
                acc["fell_back"] += int(a.fell_back)
    finally:
        for dev in devices.values():
            dev.close()
    out: dict[str, Any] = {}
    for name, acc in sums.items():
        tok = max(1.0, acc["tokens"])
        out[name] = {
            "tokens": int(acc["tokens"]),
            "tokens_per_s": acc["tokens"] / acc["latency"] if acc["latency"] else 0.0,
            "cloud_call_fraction": acc["calls"] / max(1.0, acc["positions"]),
            "round_trips_per_token": acc["round_trips"] / tok,
            "bytes_received_per_token": acc["received"] / tok,
            "bytes_sent_per_token": acc["sent"] / tok,
            "rouge_l": acc["rouge_l"] / max(1, len(tasks)),
            "fell_back": int(acc["fell_back"]),
        }
    base = out["device"]["tokens_per_s"] or 1e-9
    for row in out.values():
        row["ratio_to_device"] = row["tokens_per_s"] / base
    fuse_q = out["logit_speculative"]["rouge_l"]
    out["gated"]["quality_loss_vs_always_fuse"] = (fuse_q - out["gated"]["rouge_l"]) / fuse_q if fuse_q else 0.0
    return out


@contextlib.contextmanager
def _cloud_busy(address: str, device_name: str, task: dict[str, str]) -> Any:
    """Keep the cloud computing (one cloud-only session after another) while the body runs: how fast the
    device is when it shares the machine with a working cloud, the ceiling of every collaborative variant
    measured on one machine."""
    stop = threading.Event()
    client = CloudClient(address, insecure=True)

    def loop() -> None:  # raw steps: the cloud works, this process only parses replies
        while not stop.is_set():
            session = client.open_session(task["instruction"], k=32, encoding="packed8", max_tokens=400)
            for i in range(399):
                if stop.is_set():
                    break
                session.send_step([1000 + i])
                session.latest()
            session.close()

    th = threading.Thread(target=loop, name="bench-cloud-busy", daemon=True)
    th.start()
    try:
        yield
    finally:
        stop.set()
        th.join(timeout=120)
        client.close()


def _aggregate(address: str, device_name: str, n: int, tokens: int, tasks, device: str = "cpu") -> dict[str, float]:
    """n concurrent cloud-decoding sessions (the cloud variant: device does no model work)."""
    devices = [
        CogenDevice(DeviceConfig(device_model=device_name, cloud=address, insecure=True, max_new_tokens=tokens),
                    device_lm=shared_model(device_name, 0, device))
        for _ in range(n)
    ]
    counts = [0] * n
    barrier = threading.Barrier(n + 1)

    def work(i: int) -> None:
        barrier.wait()
        t = tasks[i % len(tasks)]
        counts[i] = devices[i].generate(t["instruction"] + f" (variant {i})", t["private_context"], "cloud").tokens

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    barrier.wait()
    start = time.perf_counter()
    for th in threads:
        th.join()
    wall = time.perf_counter() - start
    for d in devices:
        d.close()
    return {"tokens": sum(counts), "wall_s": wall, "tokens_per_s": sum(counts) / wall if wall else 0.0}


def _machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {"cpus": os.cpu_count(), "load_avg_1_5_15": [round(x, 2) for x in load], "platform": sys.platform}


def run_cogen_bench(
    quick: bool = True, out_dir: str | Path | None = None, config: CogenBenchConfig | None = None
) -> dict[str, Any]:
    """Run the CoGenesis benchmark and return its figures (also written as JSON + markdown to ``out_dir``)."""
    from tqdm import tqdm

    cfg = config or CogenBenchConfig.for_mode(quick)
    tasks = _tasks(max(cfg.n_tasks, cfg.agreement_tasks))
    for device_name in cfg.device_models:  # a mismatched pair fails before the cloud starts
        check_model_pair(device_name, cfg.cloud_model)
    result: dict[str, Any] = {"mode": "quick" if quick else "full", "config": asdict(cfg), "devices": {},
                              "machine_start": _machine(), "torch_device": placement(cfg.device).key}
    steps = 2 * len(cfg.device_models) + len(cfg.sessions) + 1
    bar = tqdm(total=steps, desc="bench cogen", file=sys.stderr)
    # One machine plays both sides: split the cores so the two processes do not oversubscribe them
    # (a real device and cloud are separate machines).
    import torch

    cores = os.cpu_count() or 2
    cloud_threads = max(1, cores // 2)
    torch.set_num_threads(max(1, cores - cloud_threads))
    result["threads"] = {"cloud": cloud_threads, "device": torch.get_num_threads()}
    stack = contextlib.ExitStack()
    cloud = stack.enter_context(spawned_cloud(cfg.cloud_model, timeout_s=600,
                                              serve_args=("--max-sessions", "32", "--threads", str(cloud_threads),
                                                                          "--device", cfg.device)))
    try:
        for device_name in cfg.device_models:
            row: dict[str, Any] = {}
            bar.set_postfix_str(f"{device_name}: bytes vs agreement")
            lp_s, lp_l = teacher_forced(cfg.cloud_model, device_name, tasks[: cfg.agreement_tasks],
                                        cfg.agreement_max_tokens, torch_device=cfg.device)
            row["wire"] = wire_curve(lp_s, lp_l, cfg.weight)
            row["wire"]["best_le_128B_ge_99.5pct"] = best_point(row["wire"])
            del lp_s, lp_l
            bar.update()
            bar.set_postfix_str(f"{device_name}: speed")
            row["speed"] = _side_by_side(cloud.address, device_name, tasks[: cfg.n_tasks], cfg.gen_tokens, cfg.weight,
                                         cfg.device)
            bar.update()
            result["devices"][device_name] = row
        agg = {}
        for n in cfg.sessions:
            bar.set_postfix_str(f"{n} sessions")
            agg[str(n)] = _aggregate(cloud.address, cfg.device_models[0], n, cfg.session_tokens, tasks, cfg.device)
            bar.update()
        result["aggregate_tokens_per_s"] = {n: a["tokens_per_s"] for n, a in agg.items()}
        result["aggregate_detail"] = agg
        bar.set_postfix_str("long context")
        long_tasks = _tasks(cfg.long_tasks, long_chars=cfg.long_chars)
        result["long_context"] = _side_by_side(cloud.address, cfg.device_models[0], long_tasks, cfg.long_tokens,
                                               cfg.weight, cfg.device)
        result["long_context_prompt_tokens"] = [
            len(CogenDevice(DeviceConfig(device_model=cfg.device_models[0]),
                            device_lm=shared_model(cfg.device_models[0], 0, cfg.device)).device_ids(t["instruction"],
                                                                                    t["private_context"]))
            for t in long_tasks]
        bar.update()
    finally:
        result["cloud_exit_code"] = cloud.stop(timeout_s=60)
        stack.close()
        bar.close()
    result["machine_end"] = _machine()
    result["targets"] = _targets(result, cfg)
    result["provenance"] = provenance(settings=asdict(cfg), seeds={"federation": 0})
    if out_dir:
        write_report(result, out_dir)
    return result


def _targets(result: dict[str, Any], cfg: CogenBenchConfig) -> dict[str, Any]:
    main = result["devices"][cfg.device_models[0]]["speed"]
    one = result["aggregate_tokens_per_s"].get("1") or 1e-9
    eight = result["aggregate_tokens_per_s"].get("8", 0.0)
    best_logit = max(main["logit_speculative"]["ratio_to_device"], main["logit_per_token"]["ratio_to_device"])
    long_ = result["long_context"]
    return {
        "logit_ge_0.9x_device": best_logit >= 0.9,
        "logit_best_ratio": best_logit,
        "long_context_logit_ge_0.67x_device": max(long_["logit_speculative"]["ratio_to_device"],
                                                  long_["logit_per_token"]["ratio_to_device"]) >= 0.67,
        "gated_ge_0.9x_with_le_20pct_cloud": main["gated"]["ratio_to_device"] >= 0.9
        and main["gated"]["cloud_call_fraction"] <= 0.2,
        "aggregate_8_ge_4x_1": eight / one >= 4.0,
        "aggregate_8_over_1": eight / one,
        "le_128B_ge_99.5pct_every_device": {name: row["wire"]["best_le_128B_ge_99.5pct"] is not None
                                            for name, row in result["devices"].items()},
    }


def write_report(result: dict[str, Any], out_dir: str | Path) -> Path:
    """JSON + markdown next to each other; returns the markdown path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results_json.write(out / "bench_cogen.json", result, indent=2, default=str)
    md = out / "bench_cogen.md"
    md.write_text(cogen_report(result))
    return md
