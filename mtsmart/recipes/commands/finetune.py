"""`mtsmart finetune --from RUN --out DIR [--tasks a,b] [--checkpoint last|best] [key=value ...]`:
MT-DNN's second stage — every task of a finished multi-task run (or the named ones) fine-tuned
alone from its encoder, each in DIR/<task>, ending with one table of the multi-task and the
fine-tuned score per task.

Each task's run is `mtsmart train` on the source's own config (DIR/stage2_config.yaml) with
`tasks=[task]`, `model.init_from` = the source's checkpoint, `model.init_heads=carry` (the task's
trained head; pass `model.init_heads=new` for a fresh one), then the overrides given here — for
instance the length of the fine-tuning, `train.max_steps=0 train.epochs=3`. Resumable: a task
with results.json is done, one with checkpoints continues (`train.resume=auto`).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

from mtsmart.components.run_dir import RunDirError, resolve_checkpoint, run_config
from mtsmart.options.config import config_to_dict, load_config
from mtsmart.support.io import atomic_write_json, atomic_write_text
from mtsmart.support.tables import table

STAGE2_CONFIG = "stage2_config.yaml"
RESULTS = "finetune_results.json"


def add_parser(commands) -> None:
    parser = commands.add_parser("finetune", help="fine-tune each task of a multi-task run from its encoder (MT-DNN's second stage)")
    parser.add_argument("--from", dest="source", required=True, help="a finished multi-task run directory")
    parser.add_argument("--out", required=True, help="parent folder: one run directory per task")
    parser.add_argument("--tasks", default="", help="comma-separated subset of the run's tasks (default: all)")
    parser.add_argument("--checkpoint", default="last", help="the source checkpoint to start from: last, best or a path")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="key=value overrides of every task's run")
    parser.set_defaults(handler=run)


def chosen_tasks(source_tasks: list[str], given: str) -> list[str]:
    names = [Path(task).stem for task in source_tasks]
    if not given:
        return names
    wanted = [name.strip() for name in given.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in names]
    if unknown:
        raise RunDirError(f"--tasks: {unknown[0]!r} is not a task of the source run; its tasks: {names}")
    return wanted


def task_overrides(task: str, checkpoint: Path, out: Path, given: list[str]) -> list[str]:
    # mix.loss_weights names the source's tasks; a one-task run has nothing to weigh.
    return [f"tasks=[{task}]", f"model.init_from={checkpoint}", "model.init_heads=carry", "mix.loss_weights={}",
            f"output_dir={out / task}", "train.resume=auto", *given]


def scores(results_file: Path, which: str, task: str) -> dict[str, float]:
    """The task's metrics ×100 in a results.json ("final" or "best")."""
    results = json.loads(results_file.read_text(encoding="utf-8"))[which]
    return {key.split("/", 1)[1]: 100 * value for key, value in results.items() if key.startswith(f"{task}/")}


def run(args: argparse.Namespace) -> int:
    source, out = Path(args.source), Path(args.out)
    cfg = run_config(source)
    checkpoint = resolve_checkpoint(source, args.checkpoint).resolve()
    if not (source / "results.json").is_file():
        raise RunDirError(f"--from {source}: the run has not finished (no results.json)")
    tasks = chosen_tasks(cfg.tasks, args.tasks)
    overrides = [text for text in args.overrides if text != "--"]
    base = out / STAGE2_CONFIG
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(base, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    for task in tasks:  # every task's config is checked before the first one trains
        load_config(base, task_overrides(task, checkpoint, out, overrides))
    failed = []
    for task in tasks:
        if (out / task / "results.json").is_file():
            print(f"{task}: done already ({out / task})", flush=True)
            continue
        print(f"{task}: fine-tuning from {checkpoint}", flush=True)
        command = [sys.executable, "-m", "mtsmart", "train", str(base), *task_overrides(task, checkpoint, out, overrides)]
        if subprocess.run(command).returncode != 0:
            failed.append(task)
    # The multi-task column is the score of the checkpoint stage two started from, where the
    # source logged it: its final model (`last`) or its best average (`best`).
    which = {"last": "final", "best": "best"}.get(args.checkpoint)
    report = {}
    rows = [["task", "metric", "multi-task", "fine-tuned", "difference"]]
    for task in tasks:
        before = scores(source / "results.json", which, task) if which else {}
        done = (out / task / "results.json").is_file()
        after = scores(out / task / "results.json", "final", task) if done else {}
        report[task] = {"multi_task": before, "fine_tuned": after}
        for metric in sorted(set(before) | set(after)) or ["(all)"]:
            value, tuned = before.get(metric), after.get(metric)
            rows.append([task, metric, "—" if value is None else f"{value:.2f}", "failed" if tuned is None else f"{tuned:.2f}",
                         "" if value is None or tuned is None else f"{tuned - value:+.2f}"])
    atomic_write_json(out / RESULTS, {"source": str(checkpoint), "tasks": report})
    print(table(rows))
    if failed:
        print(f"failed: {', '.join(failed)} (their logs above; rerun the same command to continue)", file=sys.stderr)
        return 1
    return 0
