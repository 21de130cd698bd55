"""``bench_comm.md`` and the table `fedcogen bench comm` prints: cost-to-target over seeds and quality levels.

Why its own module: the figure's wording (which bytes, which levels, what "met" means, how far a target is
missed) is stated once, next to the numbers, for the terminal and the markdown alike.
"""

from __future__ import annotations

import math
from typing import Any


def _num(x: float | None, fmt: str = ",.0f") -> str:
    return "-" if x is None else format(x, fmt)


def bound_cell(x: float | None) -> str:
    """Index bits over their bound; none (nan, or None once in JSON) when no index is sent (shared supports)."""
    return "no index bits" if x is None or not math.isfinite(x) else f"{x:.2f}"


def _ratio_cell(iv: dict[str, Any], of: int) -> str:
    """Geometric mean [interval], and (n/N) when only n of the N seeds give a ratio (not reached, or met
    by dense before training)."""
    if not iv["n"]:
        return f"- (0/{of})"
    core = f"{iv['mean']:.1f}x"
    if iv["lo"] is not None:
        core += f" [{iv['lo']:.1f}, {iv['hi']:.1f}]"
    return core + (f" ({iv['n']}/{of})" if iv["n"] < of else "")


def ratio_table(r: dict[str, Any], key: str = "ratio") -> list[str]:
    names = r["level_names"]
    lines = ["| run | lr | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    for row in r["runs"]:
        cells = [_ratio_cell(row["levels"][n][key], row["levels"][n]["of"])
                 if row["name"] != "dense" else "1x" for n in names]
        lines.append(f"| {row['name']} | {row['lr']:g} | " + " | ".join(cells) + " |")
    return lines


def bytes_table(r: dict[str, Any]) -> list[str]:
    names = r["level_names"]
    lines = ["| run | level | reached | round (mean) | bytes, every message (mean) | down | up | FitIns+FitRes |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in r["runs"]:
        for n in names:
            c = row["levels"][n]
            lines.append(f"| {row['name']} | {n} | {c['reached']}/{c['of']} | {_num(c['round']['mean'], '.1f')} | "
                         f"{_num(c['bytes_all']['mean'])} | {_num(c['bytes_down']['mean'])} | "
                         f"{_num(c['bytes_up']['mean'])} | {_num(c['bytes_flowertune']['mean'])} |")
    return lines


def _down_share(row: dict[str, Any]) -> str:
    full = [n for n, c in row["levels"].items() if c["reached"] == c["of"] and c["bytes_all"]["mean"]]
    if not full:
        return "-"
    c = max((row["levels"][n] for n in full), key=lambda c: c["bytes_all"]["mean"])
    return f"{100 * c['bytes_down']['mean'] / c['bytes_all']['mean']:.0f} %"


def target_lines(r: dict[str, Any]) -> list[str]:
    out = []
    names = r["level_names"]
    for label, level, best_key, target_key in (("dense best + 1 %", names[-1], "best", "ratio_at_final_plus_1pct"),
                                                ("90 % of dense's improvement", "90%", "best_at_90pct", "ratio_at_90pct")):
        target = r["targets"][target_key]
        name = r.get(best_key)
        if not name:
            out.append(f"- **>= {target:g}x at {label}: NOT met**: no variant reached it on every seed.")
            continue
        row = next(x for x in r["runs"] if x["name"] == name)
        iv = row["levels"][level]["ratio"]
        span = f" [{iv['lo']:.1f}, {iv['hi']:.1f}]" if iv["lo"] is not None else ""
        met = r["meets"][target_key]
        miss = "" if met else f", missed by {target / iv['mean']:.1f}x"
        out.append(f"- **>= {target:g}x at {label}: {'met' if met else 'NOT met'}**: best {name}, "
                   f"{iv['mean']:.1f}x{span} over {iv['n']} of {row['levels'][level]['of']} seeds{miss}."
                   + _weak_level_note(r, level))
    return out


def _weak_level_note(r: dict[str, Any], level: str) -> str:
    """A warning when a level asks for little of dense's improvement on some seed (below 25 %): on a model
    whose loss barely moves, "final + 1 %" can sit at or above the loss before training."""
    shares = [s["level_share_of_improvement"][level] for s in r["runs"][0]["seeds"]]
    if min(shares) >= 0.25:
        return ""
    return (f" This level asks for only {', '.join(f'{100 * x:.0f} %' for x in shares)} of dense's improvement "
            "on the seeds: it says little here.")


def markdown(r: dict[str, Any]) -> str:
    p = r["preset"]
    prov = r["provenance"]
    code = prov["code"]
    lines = [
        f"# Communication cost-to-target: model `{r['model']}`",
        "",
        f"command: `{prov['command']}`; commit {code['commit'][:12]}{' (dirty tree)' if code.get('dirty') else ''}; "
        f"preset {p['source'] or '(given in code)'}; seeds {list(p['seeds'])}; {r['seconds'] / 60:.1f} min.",
        "",
        f"**Bytes**: {r['byte_definition']}.",
        "",
        "**Levels**: with L0 the loss before training and Lb dense's best loss at its plateau (per seed), "
        "`p%` is `L0 - p (L0 - Lb)` and `final+1%` is `Lb * 1.01`. "
        f"**Plateau**: the last {p['plateau_window']} evaluations improved dense's best loss by less than "
        f"{100 * p['plateau_min_gain']:g} % of its improvement so far (cap {p['dense_max_rounds']} rounds). "
        f"**Learning rates**: every run family swept {list(p['lr_grid'])} for {p['sweep_rounds']} rounds on seed "
        f"{p['sweep_seed']}; lowest final loss wins.",
        "",
        "## Ratio dense bytes / run bytes, every message both ways (geometric mean [95 % t-interval of the logs] "
        "over seeds; (n/N) when only n of N seeds gave a ratio: not reached, or met by dense before training)",
        "",
        *ratio_table(r),
        "",
        "## Same, FlowerTune's bytes (FitIns + FitRes summed over rounds)",
        "",
        *ratio_table(r, "ratio_flowertune"),
        "",
        "A level that dense's loss met before training (its share of the improvement <= 0, see the plateau table) "
        "has no ratio: nothing was learnt to reach it.",
        "",
        "## Targets",
        "",
        *target_lines(r),
        "",
        "## Dense plateau per seed",
        "",
        "| seed | lr | stopped at round | plateau | best loss | levels |",
        "|---:|---:|---:|---|---:|---|",
    ]
    dense = r["runs"][0]
    for s in dense["seeds"]:
        pl = s["plateau"]
        share = s["level_share_of_improvement"]
        lv = ", ".join(f"{k} {v:.4f}" + (f" (= {100 * share[k]:.0f} % of the improvement)" if "%" in k and
                                         not k[:-1].replace(".", "").isdigit() else "") for k, v in s["levels"].items())
        lines.append(f"| {s['seed']} | {dense['lr']:g} | {s['rounds_run']} | "
                     f"{'reached' if pl['reached'] else 'NOT reached (cap hit)'} | {s['best_eval_loss']:.4f} | {lv} |")
    lines += ["", "## Bytes to each level (mean over the seeds that reached it)", "", *bytes_table(r), "",
              "## Learning-rate sweep (final validation loss)", "", "| run | " + " | ".join(
                  f"lr {lr:g}" for lr in p["lr_grid"]) + " | chosen |", "|---|" + "---:|" * (len(p["lr_grid"]) + 1)]
    for name, lr in r["learning_rates"].items():
        losses = [lr["final_eval_loss_by_lr"].get(f"{x:g}") for x in p["lr_grid"]]
        edge = " (grid edge)" if lr["at_grid_edge"] else ""
        lines.append(f"| {name} | " + " | ".join(_num(v, ".4f") for v in losses) + f" | {lr['lr']:g}{edge} |")
    lines += ["", "Downlink share of the bytes to the hardest level every seed reached (mean): " + ", ".join(
        f"{row['name']} {_down_share(row)}" for row in r["runs"]) + ".", ""]
    lines += ["", "## Overheads (first seed's runs)", "", "| run | fixed B/message | share of upload | "
              "record headers | index bits / bound | value bits per sent value |", "|---|---:|---:|---:|---:|---:|"]
    for name, o in r["overhead"].items():
        if o:
            lines.append(f"| {name} | {o['fixed_bytes']:.0f} | {100 * o['fixed_share']:.1f} % | "
                         f"{o['record_header_bytes']} | {bound_cell(o['index_bits_over_bound'])} | "
                         f"{_num(o.get('value_bits_per_sent_value'), '.2f')} |")
    lines += ["", "## Loss vs bytes (every evaluation, every seed: round, cumulative bytes, loss)", ""]
    for row in r["runs"]:
        for s in row["seeds"]:
            pts = "; ".join(f"{rnd}: {b:,} B {lo:.4f}" for rnd, b, lo in s["curve"])
            lines.append(f"- {row['name']} seed {s['seed']}: {pts}")
    return "\n".join(lines) + "\n"


def print_table(r: dict[str, Any]) -> None:
    print()
    print(f"model {r['model']}; ratio = dense bytes / run bytes to each level, every message both ways, "
          "geometric mean [95 % t-interval] over seeds")
    print("\n".join(ratio_table(r)))
    print("\nFlowerTune bytes (FitIns + FitRes):")
    print("\n".join(ratio_table(r, "ratio_flowertune")))
    print()
    print("\n".join(target_lines(r)))


__all__ = ["markdown", "print_table", "ratio_table", "bytes_table", "target_lines"]
