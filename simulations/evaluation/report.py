"""Markdown report and plots for an evaluation, built from the JSON that ``fedcogen eval`` writes.

Working from the JSON dict (not live objects) means a report can be regenerated from a saved
run, and the report shows exactly what the JSON holds. Plots use matplotlib's Agg backend so
they work on headless machines and inside Ray workers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedcogen.simulations.evaluation.metrics import MIN_USERS_TO_DISTINGUISH
from fedcogen.simulations.evaluation.plots import plot_latency, plot_quality_vs_bytes

SUMMARY_COLUMNS: tuple[tuple[str, str, int], ...] = (
    # (metric, column header, digits)
    ("rouge_l", "ROUGE-L F1", 3),
    ("fact_recall", "fact recall", 3),
    ("style_match", "style match", 3),
    ("leaked_facts", "leaked facts / answer", 2),
    ("foreign_facts", "foreign facts / answer", 2),
    ("bytes_total", "bytes on wire", 0),
    ("tokens_per_s", "tokens/s", 1),
    ("latency_s", "latency s", 2),
    ("cloud_call_fraction", "cloud-call fraction", 2),
    ("draft_acceptance", "draft kept", 2),  # draft_edit: share of the cloud's draft the answer kept
    ("passes_per_token", "device passes / token", 2),
)


def fmt_ci(ci: Mapping[str, Any] | None, digits: int) -> str:
    if not ci or not ci.get("n") or ci.get("mean") is None or math.isnan(ci["mean"]):
        return "n/a"
    mean, low, high = ci["mean"], ci["low"], ci["high"]
    if ci["n"] == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def summary_table(result: Mapping[str, Any], columns: Sequence[tuple[str, str, int]] = SUMMARY_COLUMNS) -> str:
    """Markdown table: one row per variant, mean [95% CI] over users for each metric, and how many answers
    ran as the variant (``scored``), fell back to the device alone, or failed (neither is in the means)."""
    counts = result.get("counts") or {}
    head = "| variant | users | " + " | ".join(h for _, h, _ in columns) + " | answers scored | fell back | failed |"
    sep = "|---|---:|" + "---:|" * len(columns) + "---:|---:|---:|"
    lines = [head, sep]
    for v in result["variants"]:
        metrics = result["overall"].get(v, {})
        n = max((ci.get("n", 0) for ci in metrics.values()), default=0)
        cells = [fmt_ci(metrics.get(k), d) for k, _, d in columns]
        c = counts.get(v)
        tail = [str(c["scored"]), str(c["fell_back"]), str(c["failed"])] if c else ["n/a"] * 3
        lines.append(f"| {v} | {n} | " + " | ".join(cells + tail) + " |")
    return "\n".join(lines)


def paired_table(result: Mapping[str, Any], metrics: Sequence[str] = ("rouge_l", "fact_recall",
                                                                       "leaked_facts", "foreign_facts")) -> str:
    """Markdown table of paired per-user differences (a - b) with CIs and a verdict."""
    rows = [p for p in result.get("paired", []) if p["metric"] in metrics]
    if not rows:
        return "_no paired comparisons (fewer than two variants, or no shared users)_"
    lines = ["| a | b | metric | users | mean(a - b) [95% CI] | distinguishable |", "|---|---|---|---:|---:|---|"]
    for p in rows:
        if p["distinguishable"]:
            verdict = "yes"
        elif p["n"] < MIN_USERS_TO_DISTINGUISH:
            verdict = f"too few users (< {MIN_USERS_TO_DISTINGUISH})"
        else:
            verdict = "no"
        lines.append(f"| {p['a']} | {p['b']} | {p['metric']} | {p['n']} | {fmt_ci(p, 3)} | {verdict} |")
    return "\n".join(lines)


def sets_markdown(result: Mapping[str, Any]) -> list[str]:
    """One summary and one paired table per task set, when the run had more than one (``result["sets"]``)."""
    sets = result.get("sets") or {}
    if len(sets) < 2:
        return []
    parts = ["## Per task set", "",
             "Each set on its own users only. *Foreign facts*: names and places in an answer that its own context "
             "lacks (other users', or the data generator's pools): written from training, not from the context.", ""]
    for name, part in sets.items():
        view = {"variants": result["variants"], "overall": part["overall"], "counts": part["counts"],
                "paired": part["paired"]}
        parts += [f"### {name} ({len(part['users'])} users, {part['tasks']} tasks; {part.get('dataset', '')})", "",
                  summary_table(view), "", paired_table(view), ""]
    return parts


def write_report(result: Mapping[str, Any], path: str | Path, title: str = "fedcogen evaluation") -> Path:
    """Write the markdown report to ``path`` and its PNG plots next to it; returns the report path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stem = path.with_suffix("")
    qb = plot_quality_vs_bytes(result, Path(f"{stem}_quality_vs_bytes.png"))
    lat = plot_latency(result, Path(f"{stem}_latency.png"))
    meta = result.get("meta", {})
    cfg = result.get("config", {})
    parts = [f"# {title}", ""]
    if meta:
        parts.append(", ".join(f"{k}: {v}" for k, v in meta.items() if not isinstance(v, dict | list)))
        parts.append("")
    parts += [
        "Means are taken per user first, then over users; intervals are "
        f"{int(100 * cfg.get('confidence', 0.95))}% percentile bootstrap intervals resampling users "
        f"({cfg.get('resamples', 1000)} resamples, seed {cfg.get('seed', 0)}). "
        "Leaked facts count the task's private facts found in what the cloud received (request bytes "
        "plus the token ids the device sent, decoded); a fact the cloud guessed itself and the device "
        "echoed back also counts, so this errs on the side of reporting a leak.",
        "",
        "## Summary",
        "",
        summary_table(result),
        "",
        "## Paired differences between variants",
        "",
        "Per-user differences a - b; a pair is *distinguishable* when the interval excludes 0 "
        f"and at least {MIN_USERS_TO_DISTINGUISH} users are paired.",
        "",
        paired_table(result),
        "",
    ]
    parts += sets_markdown(result)
    if result.get("notes"):
        parts += ["## Notes", "", *[f"- {n}" for n in result["notes"]], ""]
    skipped = result.get("invalid_lines") or []
    if skipped:
        parts += ["## Skipped input lines", "", *[f"- {s}" for s in skipped[:50]]]
        if len(skipped) > 50:
            parts.append(f"- ... and {len(skipped) - 50} more")
        parts.append("")
    parts += ["## Plots", ""]
    if qb:
        parts.append(f"![quality vs bytes]({qb.name})")
    if lat:
        parts.append(f"![latency]({lat.name})")
    if not (qb or lat):
        parts.append("_no plottable numbers_")
    path.write_text("\n".join(parts) + "\n")
    return path


# --------------------------------------------------------------------------- privacy run


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "∞" if digits >= 0 else "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def privacy_report(result: dict[str, Any], plots: Sequence[str] = ()) -> str:
    """The readable report: sweep table, attack results per variant, verdicts against the targets."""
    cfg = result["config"]
    lines = [
        "# fedcogen privacy report",
        "",
        f"Model `{cfg['model']}` (cloud/attacker `{cfg['cloud_model']}`), {cfg['n_users']} users, "
        f"{cfg['clients_per_round']} per round, {cfg['rounds']} rounds x {cfg['local_steps']} local steps, "
        f"density {cfg['density']}, DP mode `{cfg['dp_mode']}`, clip {cfg['dp_clip']}, delta {cfg['delta']}.",
        "",
        "## Privacy-utility sweep",
        "",
        "| sigma | epsilon | eval loss | canary exposure (mean / max, chance) | MIA AUC (loss / ref) "
        "| TPR@1%FPR | single-update MIA AUC |",
        "|---:|---:|---:|---|---|---:|---:|",
    ]
    for r in result["sweep"]:
        ce, m = r["canary_exposure"], r["mia"]
        lines.append(
            f"| {r['noise_multiplier']:g} | {_f(r['epsilon'], 2)} | {_f(r['utility_eval_loss'], 4)} | "
            f"{ce['mean']:.2f} / {ce['max']:.2f} ({ce['chance']:.2f}) | {m['loss']['auc']:.3f} / "
            f"{m['reference']['auc']:.3f} | {m['tpr_at_1pct_fpr']:.3f} | {r['single_update_mia']['auc']:.3f} |"
        )
    lines += [""] + [f"![{p}]({p})" for p in plots] + ["", "## CoGenesis context leakage (cloud as attacker)", "",
                                                        "| variant | verbatim rate | substring top-1 | attacker-LM top-1 "
                                                        "| chance | wire audit |",
                                                        "|---|---:|---:|---:|---:|---|"]
    for v, lk in result["context_leakage"].items():
        wa = result["wire_audit"].get(v, {})
        lines.append(
            f"| {v} | {_f(lk['verbatim_rate'])} | {_f(lk['substring_top1'])} | {_f(lk['model_top1'])} | "
            f"{_f(lk['chance'])} | {'PASS' if wa.get('pass') else 'FAIL'} ({wa.get('n_failed', '?')} of "
            f"{wa.get('n_devices', '?')} devices leak) |"
        )
    if result.get("private_span_audit"):
        lines += ["", "## Private-span protection: the audit with protection off and on", "",
                  *span_audit_markdown(result["private_span_audit"])]
    rel = result["relative_eval_loss_increase"]
    lines += [
        "",
        "## Verdicts at the chosen defence",
        "",
        f"- sigma = {result['noise_multiplier']:g}: epsilon = {_f(result['epsilon'], 2)} at delta = {result['delta']}"
        f" (target <= 8: {'met' if result['epsilon'] is not None and result['epsilon'] <= 8 else 'NOT met'}).",
        f"- eval loss {_f(result['utility_eval_loss'], 4)} vs {_f(result['baseline_eval_loss'], 4)} without DP: "
        f"{'-' if rel is None else f'{100 * rel:+.1f}%'} (target <= +5%).",
        f"- canary exposure {result['canary_exposure']:.2f} bits vs {result['canary_exposure_no_dp']:.2f} without DP "
        f"(chance {result['canary_exposure_chance']:.2f}).",
        f"- MIA AUC {result['mia_auc']:.3f} (target <= 0.55) vs {result['mia_auc_no_dp']:.3f} without DP; "
        f"TPR at 1% FPR {result['mia_tpr_at_1pct_fpr']:.3f}.",
        f"- wire audit (sketch variant, CoGenesis + {result['flower_bytes_audited']} Flower bytes): "
        f"{'PASS' if result['wire_audit_pass'] else 'FAIL'}.",
        "",
        "Trust model: DP mode `server` assumes a trusted aggregator that adds dense Gaussian noise to the mean; "
        "`client` mode (distributed DP) is meant to be combined with sparse SecAgg+ "
        "(`fedcogen.secagg`, `fedcogen.simulations.privacy.secagg_server`), honest-but-curious server, >= n - t honest clients.",
        "",
        f"Total time {result['seconds']} s.",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- benchmarks


def met_word(v: bool | None) -> str:
    """A target's verdict: met, NOT met, or n/a (nothing in the run to judge it by)."""
    return "n/a" if v is None else ("met" if v else "NOT met")


HEADLINES: dict[str, tuple[str, ...]] = {
    "comm": ("dense_eval_loss", "target_eval_loss", "dense_bytes_to_target", "best", "best_ratio",
             "best_ratio_at_90pct", "meets"),
    "cogen": ("targets", "aggregate_tokens_per_s"),
    "privacy": ("epsilon", "delta", "canary_exposure", "mia_auc", "mia_tpr_at_1pct_fpr", "wire_audit_pass",
                "utility_eval_loss"),
}


def headline_table(result: dict[str, Any]) -> str:
    lines = ["| benchmark | figure | value |", "|---|---|---|"]
    for bench, keys in HEADLINES.items():
        data = result.get(bench) or {}
        for k in keys:
            if k in data:
                v = data[k]
                text = f"{v:.4g}" if isinstance(v, float) else json.dumps(v, default=str)[:120]
                lines.append(f"| {bench} | {k} | {text} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- private-span audit


def _span_ci(c: Mapping[str, Any] | None) -> str:
    return fmt_ci(c, 3)


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _diff(c: Mapping[str, Any]) -> str:
    return f"{c['mean']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]" if c.get("n") else "n/a"


def span_audit_markdown(result: Mapping[str, Any]) -> list[str]:
    """Tables for the privacy report and the demo report."""
    lines = [
        f"Personalised device, {result['tasks']} held-out tasks of {result['users']} users; each streaming "
        "variant with private-span protection off (unprotected baseline) and on (default).", "",
        "| variant / protection | wire audit | private facts seen by cloud | in the answers (share of them seen) | attacker top-1 "
        "(chance) | ROUGE-L | fact recall | tokens withheld | cloud-call share |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in result["settings"].items():
        attacker = r["attacker_model_top1"] if r["attacker_model_top1"] is not None else r["attacker_substring_top1"]
        lines.append(
            f"| {key} | {'PASS' if r['audit_pass'] else 'FAIL'} ({r['devices_failed']}/{r['n_devices']} users leak) | "
            f"{r['facts_seen']} | {r['facts_written']} ({r['share_seen']:.0%}) | {_num(attacker)} "
            f"({_num(r['attacker_chance'])}) | {_span_ci(r['rouge_l'])} | {_span_ci(r['fact_recall'])} | "
            f"{r['private_tokens_withheld']} | {r['cloud_call_fraction']:.2f} |")
    lines += ["", "The cloud can see more distinct facts than the final answers contain: speculative rounds send "
              "the device's drafts, and a draft the fused choice rejected carried its fact to the cloud all the same "
              "(with protection on, drafts stop before a private token).", "",
              "Quality cost of protection (protected - unprotected, paired per user, 95% CI):", "",
              "| variant | ROUGE-L | fact recall |", "|---|---|---|"]
    for v, c in result["quality_cost"].items():
        lines.append(f"| {v} | {_diff(c['rouge_l'])} | {_diff(c['fact_recall'])} |")
    if result.get("learned_vs_fixed"):
        c = result["learned_vs_fixed"]
        lines += ["", "Learned gate (trained on public synthetic tasks) - fixed weight 0.5, logit with protection: "
                  f"ROUGE-L {_diff(c['rouge_l'])}, fact recall {_diff(c['fact_recall'])}."]
    verdict = ("audit FAILS without protection and PASSES with it"
               if result["unprotected_fails"] and result["protected_passes"] else
               f"unprotected fails: {result['unprotected_fails']}, protected passes: {result['protected_passes']}")
    return lines + ["", f"Verdict: {verdict}."]


# --------------------------------------------------------------------------- on a saved adapter
