"""`mtsmart <command>`: train, evaluate, predict, export, robustness (mtsmart/recipes/commands/)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from mtsmart.components.checkpoint import CheckpointError
from mtsmart.options.config import ConfigError, load_config
from mtsmart.data.readers import DataError
from mtsmart.support.io import OutputDirError
from mtsmart.support.run_lock import FolderInUseError
from mtsmart.model.multitask import ModelSourceError
from mtsmart.components.progress import final_summary, task_bests_summary
from mtsmart.components.run_dir import RunDirError
from mtsmart.recipes.study.spec import StudyError
from mtsmart.tasks.spec import TaskSpecError

USER_ERRORS = (CheckpointError, DataError, TaskSpecError, RunDirError, StudyError, ModelSourceError, OutputDirError,
               FolderInUseError, FloatingPointError)


def split_config_and_overrides(args: list[str]) -> tuple[Optional[str], list[str]]:
    """`[CONFIG.yaml] [key=value ...]` → (config path or None, overrides); an existing file is a
    config even when its path holds "="."""
    if args and ("=" not in args[0] or Path(args[0]).is_file()):
        return args[0], args[1:]
    return None, args


TRAIN_EPILOG = """\
examples:
  mtsmart train scripts/configs/quickstart.yaml
  mtsmart train scripts/configs/smart_release.yaml tasks=[rte,stsb] train.lr=3e-5 output_dir=runs/rte_stsb
  mtsmart train tasks=[sst2] adversarial.method=rdrop bregman.mu=0 train.epochs=3

Every config key, its type, default and meaning: docs/configuration.md (sections model, data,
train, eval, smart, bregman, adversarial). A value out of range is refused naming the key.
Continue an interrupted run with train.resume=auto and the same output_dir.
"""


def cmd_train(args: argparse.Namespace) -> int:
    from mtsmart.components.distributed import world_from_env
    from mtsmart.recipes.train import train

    config_path, overrides = split_config_and_overrides(args.rest)
    cfg = load_config(config_path, overrides)
    results = train(cfg, command_line=sys.argv)
    if not world_from_env().is_main:  # under torchrun only rank 0 reports
        return 0
    if "final" not in results:
        print(f"stopped at step {results['stopped_at_step']} (train.stop_after_steps); resume with train.resume=auto")
        return 0
    print(" ".join(f"{k}={v:.4f}" for k, v in results["final"].items()))
    if "best_per_task" in results:
        print(task_bests_summary(results["best_per_task"]))
    print(final_summary(results["final"], Path(cfg.output_dir)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtsmart", description="SMART multi-task fine-tuning")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train", help="train a multi-task model: mtsmart train [CONFIG.yaml] [key=value ...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=TRAIN_EPILOG,
    )
    train.add_argument("rest", nargs=argparse.REMAINDER, help="a config file, then dotted key=value overrides")
    train.set_defaults(handler=cmd_train)
    from mtsmart.recipes.commands import COMMANDS

    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as error:
        print(f"mtsmart: configuration error: {error}", file=sys.stderr)
        return 2
    except USER_ERRORS as error:  # bad input: the message names the file, line or key
        print(f"mtsmart: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
