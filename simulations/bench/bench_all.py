"""`fedcogen bench privacy` and `fedcogen bench all`: the privacy benchmark and the whole suite in one JSON.

`all` runs comm, cogen and privacy one after another (never in parallel: on 2 cores parallel runs would
measure each other), then writes one JSON with the three results and a markdown table of the headline
figures next to it.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

from fedcogen import results_json
from fedcogen.provenance import provenance
from fedcogen.simulations.bench.bench_cogen import run_cogen_bench
from fedcogen.simulations.bench.bench_comm import run_bench
from fedcogen.simulations.evaluation.report import headline_table
from fedcogen.simulations.privacy.privacy_run import PrivacyRunConfig, quick_config, run_privacy


def run_privacy_bench(quick: bool, out_dir: str | Path) -> dict[str, Any]:
    cfg = quick_config(out_dir=str(out_dir)) if quick else PrivacyRunConfig(out_dir=str(out_dir))
    return run_privacy(cfg)


def run_all(quick: bool, out_dir: str | Path) -> dict[str, Any]:
    out = Path(out_dir)
    result: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": __import__("os").cpu_count()},
        "quick": quick,
        "seconds": {},
        "provenance": provenance(settings={"quick": quick, "out_dir": str(out)}),
    }
    for name, fn in (("comm", lambda: run_bench(quick=quick, out_dir=str(out / "comm"))),
                     ("cogen", lambda: run_cogen_bench(quick=quick, out_dir=out / "cogen")),
                     ("privacy", lambda: run_privacy_bench(quick, out / "privacy"))):
        print(f"\n=== bench {name}", flush=True)
        t = time.perf_counter()
        result[name] = fn()
        result["seconds"][name] = round(time.perf_counter() - t, 1)
    return result


def write_suite(result: dict[str, Any], json_path: str | None, out_dir: Path) -> None:
    """One JSON with every benchmark result plus a markdown table of the headline figures next to it."""
    target = Path(json_path) if json_path else out_dir / "bench.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    results_json.write(target, result, default=str)
    md = target.with_suffix(".md")
    md.write_text(f"# fedcogen benchmarks\n\nmachine: {result.get('machine')}\n\n{headline_table(result)}\n")
    print(f"\n{headline_table(result)}\n\nJSON: {target}\nmarkdown: {md}")
