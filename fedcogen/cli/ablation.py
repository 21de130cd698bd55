"""`fedcogen ablation`: run an ablation experiment file (arms of overrides on a shared base) in one invocation.

The experiment itself (arms, training, evaluation, report) is
:mod:`fedcogen.simulations.evaluation.training_mix_ablation`; this module only parses flags.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedcogen.cli.common import add_command

EPILOG = """\
config file (TOML; simulations/evaluation/ablations/training_mix.toml is the issue 26 one):
  [ablation]  baseline = "full"          the arm every other arm is compared with, user by user
  [data]      FederationConfig fields    n_users, seed, variety, max_context_words, distractor_facts,
                                         absent_fact_percent, format_variety, ...
  [run]       grouped run-config keys    "model.name", "strategy.rounds", "data.fact-swaps", "lora.r", ...
                                         (as in pyproject's [tool.flwr.app.config]); the first
                                         strategy.num-clients users train, the rest are the unseen users
  [eval]      foreign_set, foreign_tasks_per_user, unseen_tasks_per_user, max_new_tokens, batch_size,
              resamples, seed
  [arms.NAME] data = {...}, run = {...}  overrides of [data] / [run]; arms run in the file's order
  An unknown table or key, or a bad value, is an error naming it.

per arm: generate its federation, train it (the library function of `fedcogen simulate`, loopback engine),
export the adapter, answer the same fixed tasks with device + adapter: the foreign set ([eval] foreign_set,
capped per user) and the test tasks of the baseline arm's unseen users (never trained in any arm). The base
device answers them once. Reported per arm and set: ROUGE-L, fact recall and foreign facts (names / places
the answer invents) with 95% intervals over users, paired per-user differences vs the baseline arm and vs
the base device ("tie" when the interval spans 0), training loss by round, final eval loss, seconds, and
provenance (commit, settings, seeds). The JSON and the report are rewritten after every arm, so a run
stopped early still reports the arms it finished.

exit codes: 0 every arm finished; 1 some arm failed (its error is in the results); 2 bad config or flags.

example:
  nice -n 10 timeout 4200 fedcogen ablation --config simulations/evaluation/ablations/training_mix.toml \\
      --out-dir runs/ablation --json docs/results/training-mix-ablation.json \\
      --report docs/results/training-mix-ablation.md
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "ablation", "run an ablation experiment file: which parts of a training mix carry the gain",
        func=run,
        description="Train and evaluate every arm of an ablation config (arms = overrides of a shared "
        "federation and run) from one commit in one invocation; write one JSON and one markdown report.",
        epilog=EPILOG,
    )
    p.add_argument("--config", required=True, type=Path, help="the experiment file (TOML or JSON; format below)")
    p.add_argument("--out-dir", type=Path, default=Path("runs/ablation"),
                   help="per-arm data, federated runs, adapters and full evaluation files")
    p.add_argument("--json", dest="json_out", type=Path,
                   help="results JSON (default: OUT_DIR/ablation.json)")
    p.add_argument("--report", type=Path, help="markdown report (default: next to --json, .md)")
    p.add_argument("--arms", help="comma-separated arm names to run (default: every arm, in the file's order)")
    p.add_argument("--check", action="store_true", help="check the config, print the arms and exit")


def run(args: argparse.Namespace) -> int:
    from fedcogen.simulations.evaluation import training_mix_ablation as ab

    cfg = ab.load_config(args.config)
    names = [a.strip() for a in args.arms.split(",") if a.strip()] if args.arms else None
    chosen = ab.select_arms(cfg, names)
    if args.check:
        for arm in chosen:
            print(f"{arm.name}: {arm.overrides or 'the base'}")
        print(f"baseline: {cfg.baseline}; eval: {cfg.eval}")
        return 0
    json_out = args.json_out or args.out_dir / "ablation.json"
    report = args.report or json_out.with_suffix(".md")
    report.parent.mkdir(parents=True, exist_ok=True)

    def write_report(result: dict) -> None:
        report.write_text(ab.report_markdown(result))

    result = ab.run_ablation(cfg, args.out_dir, json_out, arms=names, on_update=write_report,
                             command_settings={"out_dir": str(args.out_dir), "arms": names})
    print(f"wrote {json_out} and {report}")
    for line in result["conclusions"]:
        print(line)
    failed = [n for n, a in result["arms"].items() if a.get("status") != "done"]
    if failed:
        print(f"fedcogen ablation: arm(s) {', '.join(failed)} did not finish (errors in {json_out})")
        return 1
    return 0
