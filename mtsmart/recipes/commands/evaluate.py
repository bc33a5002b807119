"""`mtsmart evaluate --run DIR [--checkpoint best|last|PATH] [--split dev|test] [--json]`.

Metrics of every task of a run, computed as the training loop computed them (same batches,
precision and eval.max_examples), so `last` reproduces results.json "final" and `best` its "best".
"""
from __future__ import annotations

import argparse
import json

from mtsmart.recipes.commands.common import add_run_arguments, open_run, table
from mtsmart.components.evaluate import evaluate
from mtsmart.components.run_dir import RunDirError, run_eval_sets


def add_parser(commands) -> None:
    parser = commands.add_parser("evaluate", help="metrics of a trained run on its dev or test sets")
    add_run_arguments(parser)
    parser.add_argument("--split", choices=("dev", "test"), default="dev", help="dev sets, or the labelled test sets")
    parser.add_argument("--max-examples", type=int, default=None, help="first N examples per set; 0 = all (default: the run's eval.max_examples)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    loaded = open_run(args)
    eval_sets, skipped = run_eval_sets(loaded, args.split, args.max_examples)
    if not eval_sets:
        names = ", ".join(skipped)
        raise RunDirError(f"--split {args.split}: no labelled {args.split} set among the run's evaluations ({names})")
    results = evaluate(loaded.model, eval_sets, loaded.device, loaded.autocast)
    if args.json:
        print(json.dumps({"checkpoint": str(loaded.checkpoint), "step": loaded.step, "split": args.split,
                          "results": results, "unlabelled": skipped}, indent=2, sort_keys=True))
        return 0
    print(f"{loaded.checkpoint} (step {loaded.step}), {args.split} sets (× 100, as training prints them; --json: fractions)")
    rows = [["evaluation", "metric", "value"]]
    rows += [[key.split("/")[0], key.split("/")[1], f"{100 * value:.2f}"] for key, value in results.items() if key != "avg"]
    rows.append(["avg", "", f"{100 * results['avg']:.2f}"])
    print(table(rows))
    if skipped:
        print(f"unlabelled {args.split} sets (no metrics): {', '.join(skipped)}")
    return 0
