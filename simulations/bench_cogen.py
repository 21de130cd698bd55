"""CoGenesis benchmark: wire bytes, top-k fidelity, speed of each variant, cloud batching throughput.

``run_cogen_bench(quick)`` starts a real cloud (``fedcogen cloud serve`` in a child process, plaintext
on loopback so TLS cost is not mixed into model speed) and measures:

* ``bytes_per_token_full`` / ``bytes_per_token_topk[k]``: reply payload bytes per generated token, read
  from the device's wire capture during real ``logit`` generations (fp16 values; int8 at k=64 too).
* ``top1_agreement_topk_vs_full[k]``: how often the fused next-token argmax with a top-k cloud
  distribution equals the argmax with the full fp32 distribution, teacher-forced on reference texts
  (in-process, with the same codec the wire uses: what the device would rebuild from each packet).
* ``tokens_per_s_device_only`` / ``_logit`` / ``_gated`` and ``cloud_call_fraction_gated``.
* ``aggregate_tokens_per_s[n]`` for n = 1, 2, 4, 8 concurrent cloud-decoding sessions (dynamic batching).

quick: tiny models (seconds). full: smollm2 cloud with the pruned smollm2-24l and smollm2-half devices, and smollm2 as device too.
The machine's other load shows up in every speed figure; they are measurements, not guarantees.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedcogen.client.cogen_device import CogenDevice, DeviceConfig
from fedcogen.client.fusion import fuse_logprobs
from fedcogen.client.incremental_lm import IncrementalLM
from fedcogen.dataset import FederationConfig, generate_federation
from fedcogen.models import chat_input_ids, check_tokenizers_match, shared_model
from fedcogen.prompts import CLOUD_SYSTEM, DEVICE_SYSTEM, cloud_prompt, device_prompt
from fedcogen.protocols import logit_codec
from fedcogen.simulations.processes import spawned_cloud
from fedcogen.simulations.report import cogen_report

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
    ks: tuple[int, ...] = (16, 32, 64, 128)
    weight: float = 0.5
    gen_tokens: int = 24
    n_tasks: int = 3
    agreement_tasks: int = 8
    agreement_max_tokens: int = 64
    sessions: tuple[int, ...] = (1, 2, 4, 8)
    session_tokens: int = 24
    gated_threshold: float = 2.5
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_mode(cls, quick: bool) -> CogenBenchConfig:
        if quick:
            return cls()
        return cls(
            cloud_model="smollm2",
            device_models=("smollm2-24l", "smollm2-half", "smollm2"),
            gen_tokens=48,
            n_tasks=3,
            agreement_tasks=16,
            session_tokens=32,
        )


def _tasks(n: int) -> list[dict[str, str]]:
    """Reference tasks: the synthetic federation's test split when available, else built-in ones."""
    try:
        fed = generate_federation(FederationConfig(n_users=4, seed=0, history_per_user=4, train_tasks_per_user=0,
                                                   val_tasks_per_user=0, test_tasks_per_user=4))
        tasks = [
            {"instruction": t.instruction, "private_context": t.private_context, "reference": t.reference}
            for t in fed.tasks["test"]
        ]
    except Exception as exc:  # noqa: BLE001 - the generator is optional for this benchmark
        log.info("synthetic data unavailable (%s); using built-in reference tasks", exc)
        tasks = []
    tasks = tasks or FALLBACK_TASKS
    return [tasks[i % len(tasks)] for i in range(n)]


def _agreement(cfg: CogenBenchConfig, device_name: str, tasks: list[dict[str, str]]) -> dict[str, Any]:
    """Fused top-1 with top-k cloud distributions vs with the full distribution, teacher-forced."""
    import torch

    cloud, device = shared_model(cfg.cloud_model), shared_model(device_name)
    check_tokenizers_match(device.tokenizer, cloud.tokenizer)
    small, large = IncrementalLM(device.model), IncrementalLM(cloud.model)
    modes = [(k, "fp16") for k in cfg.ks] + [(64, "int8")]
    hits = {f"{k}-{enc}": 0 for k, enc in modes}
    steps = 0
    for t in tasks:
        ref = device.tokenizer(t["reference"], add_special_tokens=False)["input_ids"][: cfg.agreement_max_tokens]
        lp_s = small.teacher_forced(
            chat_input_ids(device.tokenizer, device_prompt(t["instruction"], t["private_context"]), DEVICE_SYSTEM), ref
        )
        lp_l = large.teacher_forced(chat_input_ids(cloud.tokenizer, cloud_prompt(t["instruction"]), CLOUD_SYSTEM), ref)
        for i in range(len(ref)):
            full = logit_codec.decode(logit_codec.encode(lp_l[i], 0, "full"))
            base = int(fuse_logprobs(lp_s[i], full, cfg.weight).argmax())
            for k, enc in modes:
                rebuilt = logit_codec.decode(logit_codec.encode(lp_l[i], k, enc))
                hits[f"{k}-{enc}"] += int(int(fuse_logprobs(lp_s[i], rebuilt, cfg.weight).argmax()) == base)
            steps += 1
    del torch
    return {"steps": steps, "agreement": {m: h / max(1, steps) for m, h in hits.items()}}


def _generate_many(address: str, device_name: str, tasks, variant: str, **kw) -> dict[str, Any]:
    dev = CogenDevice(DeviceConfig(device_model=device_name, cloud=address, insecure=True, **kw),
                      device_lm=shared_model(device_name))
    try:
        dev.generate(tasks[0]["instruction"], tasks[0]["private_context"], variant)  # warm-up
        rows = [dev.generate(t["instruction"], t["private_context"], variant) for t in tasks]
    finally:
        dev.close()
    tokens = sum(r.tokens for r in rows)
    wall = sum(r.latency_s for r in rows)
    return {
        "tokens": tokens,
        "tokens_per_s": tokens / wall if wall else 0.0,
        "bytes_received_per_token": sum(r.bytes_received for r in rows) / max(1, tokens),
        "bytes_sent_per_token": sum(r.bytes_sent for r in rows) / max(1, tokens),
        "cloud_call_fraction": sum(r.cloud_calls for r in rows) / max(1, sum(max(1, r.tokens) for r in rows)),
        "fell_back": sum(r.fell_back for r in rows),
    }


def _aggregate(address: str, device_name: str, n: int, tokens: int, tasks) -> dict[str, float]:
    """n concurrent cloud-decoding sessions (the cloud variant: device does no model work)."""
    devices = [
        CogenDevice(DeviceConfig(device_model=device_name, cloud=address, insecure=True, max_new_tokens=tokens),
                    device_lm=shared_model(device_name))
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


def run_cogen_bench(
    quick: bool = True, out_dir: str | Path | None = None, config: CogenBenchConfig | None = None
) -> dict[str, Any]:
    """Run the CoGenesis benchmark and return its figures (also written as JSON + markdown to ``out_dir``)."""
    from tqdm import tqdm

    cfg = config or CogenBenchConfig.for_mode(quick)
    tasks = _tasks(max(cfg.n_tasks, cfg.agreement_tasks))
    result: dict[str, Any] = {"mode": "quick" if quick else "full", "config": asdict(cfg), "devices": {}}
    steps = len(cfg.device_models) * (3 + len(cfg.ks) + 3) + len(cfg.sessions)
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
                                              serve_args=("--max-sessions", "32", "--threads", str(cloud_threads))))
    try:
        for device_name in cfg.device_models:
            gen_tasks = tasks[: cfg.n_tasks]
            common = {"max_new_tokens": cfg.gen_tokens, "weight": cfg.weight}
            row: dict[str, Any] = {}
            bar.set_postfix_str(f"{device_name}: agreement")
            row["agreement"] = _agreement(cfg, device_name, tasks[: cfg.agreement_tasks])
            bar.update(3)
            full = _generate_many(cloud.address, device_name, gen_tasks, "logit", encoding="full", **common)
            row["bytes_per_token_full"] = full["bytes_received_per_token"]
            row["bytes_per_token_topk"] = {}
            for k in cfg.ks:
                bar.set_postfix_str(f"{device_name}: k={k}")
                r = _generate_many(cloud.address, device_name, gen_tasks, "logit", k=k, **common)
                row["bytes_per_token_topk"][str(k)] = r["bytes_received_per_token"]
                if k == 64:
                    row["logit_k64"] = r
                bar.update()
            r8 = _generate_many(cloud.address, device_name, gen_tasks, "logit", k=64, encoding="int8", **common)
            row["bytes_per_token_int8_k64"] = r8["bytes_received_per_token"]
            bar.set_postfix_str(f"{device_name}: speed")
            dev = _generate_many(cloud.address, device_name, gen_tasks, "device", **common)
            bar.update()
            gated = _generate_many(cloud.address, device_name, gen_tasks, "gated", k=64,
                                   gated_threshold=cfg.gated_threshold, **common)
            bar.update()
            row["tokens_per_s_device_only"] = dev["tokens_per_s"]
            row["tokens_per_s_logit"] = row["logit_k64"]["tokens_per_s"]
            row["tokens_per_s_gated"] = gated["tokens_per_s"]
            row["cloud_call_fraction_gated"] = gated["cloud_call_fraction"]
            row["logit_speed_ratio"] = row["tokens_per_s_logit"] / max(1e-9, row["tokens_per_s_device_only"])
            row["bytes_sent_per_token_logit"] = row["logit_k64"]["bytes_sent_per_token"]
            bar.update()
            result["devices"][device_name] = row
        agg = {}
        for n in cfg.sessions:
            bar.set_postfix_str(f"{n} sessions")
            agg[str(n)] = _aggregate(cloud.address, cfg.device_models[0], n, cfg.session_tokens, tasks)
            bar.update()
        result["aggregate_tokens_per_s"] = {n: a["tokens_per_s"] for n, a in agg.items()}
        result["aggregate_detail"] = agg
    finally:
        result["cloud_exit_code"] = cloud.stop(timeout_s=60)
        stack.close()
        bar.close()
    main = result["devices"][cfg.device_models[0]]
    top = main["agreement"]["agreement"]
    result.update(
        {
            "bytes_per_token_full": main["bytes_per_token_full"],
            "bytes_per_token_topk": main["bytes_per_token_topk"],
            "top1_agreement_topk_vs_full": top,
            "tokens_per_s_device_only": main["tokens_per_s_device_only"],
            "tokens_per_s_logit": main["tokens_per_s_logit"],
            "tokens_per_s_gated": main["tokens_per_s_gated"],
            "cloud_call_fraction_gated": main["cloud_call_fraction_gated"],
        }
    )
    one = result["aggregate_tokens_per_s"].get("1") or 1e-9
    eight = result["aggregate_tokens_per_s"].get("8", 0.0)
    best_k = min((int(k) for k, b in main["bytes_per_token_topk"].items() if b <= 1024 and top.get(f"{k}-fp16", 0) >= 0.99),
                 default=None)
    result["targets"] = {
        "le_1KB_per_token_with_ge_99pct_agreement": best_k is not None,
        "smallest_k_meeting_it": best_k,
        "logit_ge_0.67x_device": main["logit_speed_ratio"] >= 0.67,
        "aggregate_8_ge_3x_1": eight / one >= 3.0,
        "aggregate_8_over_1": eight / one,
    }
    if out_dir:
        write_report(result, out_dir)
    return result


def write_report(result: dict[str, Any], out_dir: str | Path) -> Path:
    """JSON + markdown next to each other; returns the markdown path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_cogen.json").write_text(json.dumps(result, indent=2, default=str))
    md = out / "bench_cogen.md"
    md.write_text(cogen_report(result))
    return md
