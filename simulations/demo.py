"""The main job: every part of fedcogen on one small federation, with a report at the end.

Stages (each prints progress): data -> model -> (later stages are added as the parts land).
"""

from __future__ import annotations

import argparse
import json
import time
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any


@dataclass
class DemoConfig:
    """Demo settings; every field can be overridden by a flag of the same name."""

    name: str = "demo"
    out: str = "runs"
    quick: bool = False
    users: int = 4
    rounds: int = 3
    local_steps: int = 4
    density: float = 0.01
    eval_tasks: int = 4
    max_new_tokens: int = 48
    seed: int = 0
    device_model: str = "smollm2-half"
    cloud_model: str = "smollm2"

    def __post_init__(self) -> None:
        if self.quick:
            self.device_model, self.cloud_model = "tiny", "tiny-large"
        if self.users < 2:
            raise ValueError("demo needs at least 2 users")

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / self.name


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"demo config {path} not found")
        text = path.read_text()
        values.update(tomllib.loads(text) if path.suffix == ".toml" else json.loads(text))
    known = {f.name for f in fields(DemoConfig)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown demo config keys: {sorted(unknown)} (known: {sorted(known)})")
    for f in fields(DemoConfig):
        v = getattr(args, f.name, None)
        if v is not None and v is not False:
            values[f.name] = v
    if "name" not in values:
        values["name"] = "demo-quick" if values.get("quick") else "demo"
    return DemoConfig(**values)


def _stage(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def run_demo(cfg: DemoConfig) -> dict[str, str]:
    import torch
    from fedcogen.client.prompts import device_prompt
    from fedcogen.simulations.data import FederationConfig, generate_federation, write_federation

    from fedcogen.models import chat_input_ids, load_model

    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {"config": asdict(cfg)}

    t = _stage(f"1/2 private federation: {cfg.users} users")
    fed = generate_federation(FederationConfig(n_users=cfg.users, seed=cfg.seed))
    data_dir = write_federation(fed, run_dir / "data")
    metrics["data"] = {"dir": str(data_dir), "seconds": round(time.perf_counter() - t, 2)}
    print(f"written to {data_dir}")

    t = _stage(f"2/2 device model {cfg.device_model}: answer one private task")
    lm = load_model(cfg.device_model, seed=cfg.seed)
    task = fed.tasks["test"][0]
    ids = torch.tensor([chat_input_ids(lm.tokenizer, device_prompt(task.instruction, task.private_context))])
    with torch.no_grad():
        out = lm.model.generate(ids, max_new_tokens=cfg.max_new_tokens, do_sample=False,
                                pad_token_id=lm.tokenizer.pad_token_id)
    answer = lm.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    print(f"instruction: {task.instruction}\nanswer: {answer}")
    metrics["device_answer"] = {"instruction": task.instruction, "answer": answer,
                                "seconds": round(time.perf_counter() - t, 2)}

    metrics_path = run_dir / "metrics.json"
    metrics_path.write_text(json.dumps(metrics, indent=2))
    report = run_dir / "report.md"
    report.write_text(f"# fedcogen demo\n\nDevice answer to `{task.instruction}`:\n\n> {answer}\n")
    return {"report": str(report), "metrics": str(metrics_path)}
