"""What a federated run leaves on disk: metrics, the byte ledger and a markdown summary."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedcogen import results_json
from fedcogen.lora_adapter import adapter_digest
from fedcogen.provenance import provenance
from fedcogen.run_config import FLSettings
from fedcogen.server.fl.fl_state import LEDGER_JOURNAL, ServerState, read_rows


def write_outputs(out: Path, state: ServerState, settings: FLSettings, n_params: int, stopped_reason: str,
                  dp_report: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``metrics.json``, ``ledger.json`` and ``metrics.md`` into ``out`` and return the result dict.

    The ledger is the journal (every committed round) plus the rows not yet committed. Plots are the
    caller's business (the simulation driver draws them from this dict).
    """
    st = state
    entries = read_rows(out / LEDGER_JOURNAL) + list(st.ledger)
    ledger = ledger_summary(entries, n_params)
    evals = [m for m in st.metrics if "eval_loss" in m]
    result = {
        "settings": settings.to_config(),
        "adapter_params": n_params,
        "completed_rounds": st.round,
        "stopped_reason": stopped_reason,
        "final_eval_loss": evals[-1]["eval_loss"] if evals else float("nan"),
        "final_eval_ppl": evals[-1]["eval_ppl"] if evals else float("nan"),
        "rejected_total": dict(sum((Counter(m.get("rejected", {})) for m in st.metrics), Counter())),
        "failures_total": sum(len(m.get("failures", {})) for m in st.metrics),
        "bytes": ledger["totals"],
        "rounds": st.metrics,
        "global_adapter_digest": adapter_digest(st.global_adapter),
        "broadcast_digest": adapter_digest(st.broadcast),
        "provenance": provenance(settings=settings.to_config(), seeds={"seed": settings.seed}),
    }
    if dp_report is not None:
        result["dp"] = dict(dp_report)
    write_metrics_json(out / "metrics.json", result)
    write_metrics_json(out / "ledger.json", {"summary": ledger, "entries": entries})
    (out / "metrics.md").write_text(markdown_report(result, ledger))
    return result


def ledger_summary(entries: Iterable[Mapping[str, Any]], n_params: int) -> dict[str, Any]:
    """Totals per direction / phase / round / client over every booked message.

    ``totals["all"]`` is every message both ways (query, train, evaluate, broadcast patches and
    catch-ups travel inside them). No dense-equivalent ratio is derived here: a dense comparison is
    only reported where a dense run was actually measured (``fedcogen bench comm``).
    """
    entries = list(entries)
    dense = 4 * n_params
    tot: Counter = Counter()
    per_round: dict[int, Counter] = {}
    per_client: dict[str, Counter] = {}
    n_train = Counter()
    for e in entries:
        d = e["direction"]
        tot[d] += e["bytes"]
        tot[f"{e['phase']}_{d}"] += e["bytes"]
        per_round.setdefault(int(e["round"]), Counter())[d] += e["bytes"]
        per_client.setdefault(e["client_id"] or str(e["node_id"]), Counter())[d] += e["bytes"]
        if e["phase"] == "train" and not e.get("error"):
            n_train[d] += 1
    return {
        "totals": {"down": tot["down"], "up": tot["up"], "all": tot["down"] + tot["up"],
                   **{k: v for k, v in tot.items() if k not in ("down", "up")}},
        "messages": len(entries),
        "dense_fp32_adapter_bytes": dense,
        "train_messages": dict(n_train),
        "per_round": {str(r): dict(c) for r, c in sorted(per_round.items())},
        "per_client": {k: dict(v) for k, v in sorted(per_client.items())},
    }


def markdown_report(result: Mapping[str, Any], ledger: Mapping[str, Any]) -> str:
    lines = [
        "# Federated sparse-LoRA run",
        "",
        f"- model: `{result['settings']['model']}`, adapter parameters: {result['adapter_params']}",
        f"- rounds completed: {result['completed_rounds']}, final eval loss: {result['final_eval_loss']:.4f} "
        f"(ppl {result['final_eval_ppl']:.2f})",
        f"- bytes, every message both ways: {ledger['totals']['all']} (down {ledger['totals']['down']}, "
        f"up {ledger['totals']['up']}; {ledger['messages']} messages); one dense fp32 adapter is "
        f"{ledger['dense_fp32_adapter_bytes']} B",
        f"- rejected updates: {result['rejected_total'] or 'none'}; client failures: {result['failures_total']}",
        "",
        "| round | train loss | eval loss | accepted | rejected | failures | bytes up | bytes down |",
        "|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for m in result["rounds"]:
        lines.append(
            f"| {m['round']} | {m.get('train_loss', float('nan')):.4f} | {m.get('eval_loss', float('nan')):.4f} | "
            f"{m.get('accepted', '-')} | {m.get('rejected', {}) or ''} | {len(m.get('failures', {}))} | "
            f"{m.get('bytes_up', 0)} | {m.get('bytes_down', 0)} |"
        )
    return "\n".join(lines) + "\n"


def ppl(loss: float) -> float:
    """Perplexity of a mean token loss (NaN stays NaN; capped to avoid overflow)."""
    return float(math.exp(min(loss, 50.0))) if math.isfinite(loss) else float("nan")


def write_metrics_json(path: Path, obj: Any) -> None:
    """Strict JSON (``null`` for a loss that was not measured), written atomically (tmp file + rename)."""
    tmp = results_json.write(path.with_suffix(path.suffix + ".tmp"), obj, default=_json_default)
    tmp.replace(path)


# The run's float metrics that are NaN in memory when nothing was measured (``null`` in the file).
NOT_MEASURED_KEYS = frozenset({"final_eval_loss", "final_eval_ppl", "train_loss", "eval_loss", "eval_ppl",
                               "index_bits_over_bound"})


def read_metrics(path: str | Path) -> dict[str, Any]:
    """A run's ``metrics.json`` as the dict the run returned in memory (``null`` metrics back to NaN), so a
    run read from disk (the Flower engine, a reused run) and one returned in process compare and format alike."""
    def nan_for_null(obj: dict[str, Any]) -> dict[str, Any]:
        return {k: float("nan") if v is None and k in NOT_MEASURED_KEYS else v for k, v in obj.items()}
    return json.loads(Path(path).read_text(), object_hook=nan_for_null)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer | np.floating):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
