"""The CoGenesis gap on a bounded set of the federation's users, with and without the public cloud LoRA.

What CoGenesis reports, measured here on our own data: (1) the cloud given the private context (the
privacy-violating upper bound) writes far better than the cloud from the instruction alone, and (2) the
cloud from the instruction alone is a stronger writer than the small device model. Two kinds of figures:

* teacher-forced losses on the references (:func:`writer_strength`), cheap, for the base cloud and for
  the cloud with the adapter: whether training on public data made the cloud the stronger writer;
* generations through the real path (a ``fedcogen cloud serve --adapter`` process, the device's
  ``CogenDevice``, ``evaluate``), ROUGE-L and fact recall with per-user 95 % intervals, for the
  variants ``cloud``, ``device`` and ``cloud_with_context``.

The tasks are the test tasks of the demo's federation (seed 0); the cloud never trained on any of its
users (``public_corpus``), so every user here is unseen by the cloud.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from fedcogen.dataset import FederationConfig, generate_federation, user_ids
from fedcogen.simulations.evaluation import evaluate as evaluation
from fedcogen.simulations.evaluation.cogen_generator import CogenGenerator
from fedcogen.simulations.evaluation.metrics import StyleMarkers
from fedcogen.simulations.evaluation.writer_strength import writer_strength
from fedcogen.simulations.federation.processes import spawned_cloud

GEN_VARIANTS = ("cloud", "device", "cloud_with_context")


@dataclass
class GapConfig:
    """Which users and tasks, which models, and whether to generate (slow) or only score losses."""

    adapter: str | None = None
    cloud_model: str = "smollm2"
    device_model: str = "smollm2-27l"
    seed: int = 0  # the demo's federation
    users: int = 12  # the demo's 8 training + 4 held-out users
    first_user: int = 8  # evaluate users first_user.. (the demo's held-out users)
    tasks_per_user: int = 3
    generate: bool = True
    max_new_tokens: int = 96
    max_seq_len: int = 320
    batch: int = 12

    def __post_init__(self) -> None:
        if not 0 <= self.first_user < self.users:
            raise ValueError(f"first_user must be in [0, users={self.users}) (got {self.first_user})")
        if self.tasks_per_user < 1:
            raise ValueError(f"tasks_per_user must be >= 1 (got {self.tasks_per_user})")


def gap_tasks(cfg: GapConfig) -> tuple[Any, list[Any]]:
    fed = generate_federation(FederationConfig(n_users=cfg.users, seed=cfg.seed))
    users = user_ids(fed)[cfg.first_user:]
    return fed, [t for u in users for t in fed.tasks_of(u, "test")[: cfg.tasks_per_user]]


def measure_gap(cfg: GapConfig, log: Any = print) -> dict[str, Any]:
    fed, tasks = gap_tasks(cfg)
    out: dict[str, Any] = {"config": asdict(cfg), "tasks": len(tasks), "users": sorted({t.user_id for t in tasks})}
    t0 = time.perf_counter()
    out["losses"] = {"base_cloud": writer_strength(cfg.device_model, cfg.cloud_model, tasks, cfg.max_seq_len)}
    if cfg.adapter:
        out["losses"]["public_cloud"] = writer_strength(cfg.device_model, cfg.cloud_model, tasks, cfg.max_seq_len,
                                                        cloud_adapter=cfg.adapter)
    out["loss_seconds"] = round(time.perf_counter() - t0, 1)
    for name, ws in out["losses"].items():
        log(f"  {name}: loss from the instruction {ws['cloud_loss']:.3f} (device {ws['device_loss']:.3f}), "
            f"with context {ws['cloud_context_loss']:.3f}")
    if not cfg.generate:
        return out
    t0 = time.perf_counter()
    serve = ["--max-batch", str(cfg.batch), "--batch-window-ms", "10"] + (["--adapter", cfg.adapter] if cfg.adapter else [])
    profiles = {p.user_id: StyleMarkers.from_profile(asdict(p)) for p in fed.profiles}
    with spawned_cloud(cfg.cloud_model, allow_eval_only_context=True, timeout_s=900, serve_args=serve) as cloud:
        gen = CogenGenerator.create(device_model=cfg.device_model, cloud_address=cloud.address, insecure=True,
                                    max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
        try:
            result = evaluation.evaluate(tasks, gen, list(GEN_VARIANTS), profiles=profiles,
                                         config=evaluation.EvalConfig(seed=cfg.seed, batch_size=cfg.batch)).to_dict()
        finally:
            gen.close()
    out["generation_seconds"] = round(time.perf_counter() - t0, 1)
    out["overall"] = {v: {k: result["overall"][v][k] for k in ("rouge_l", "fact_recall", "style_match")}
                      for v in GEN_VARIANTS}
    out["paired"] = [p for p in result["paired"] if p.get("metric") in ("rouge_l", "fact_recall")]
    out["counts"] = result["counts"]
    out["answers"] = [{k: r.get(k) for k in ("variant", "task_id", "user_id", "text", "rouge_l", "fact_recall")}
                      for r in result["rows"]]
    for v in GEN_VARIANTS:
        o = out["overall"][v]
        log(f"  {v:<20} ROUGE-L {o['rouge_l']['mean']:.3f} [{o['rouge_l']['low']:.3f}, {o['rouge_l']['high']:.3f}]"
            f"  fact recall {o['fact_recall']['mean']:.2f}")
    return out
