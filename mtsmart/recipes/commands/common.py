"""Arguments every run-reading command shares, and how they become a LoadedRun."""
from __future__ import annotations

import argparse
from pathlib import Path

from mtsmart.components.run_dir import LoadedRun, RunDirError, load_run
from mtsmart.support.tables import table  # noqa: F401  (the commands print with it)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="a run directory written by `mtsmart train`")
    parser.add_argument("--checkpoint", default="last", help="best (the best average), best:<task> (that task's best, multi-task runs), last (the latest step checkpoint) or a checkpoint path")
    parser.add_argument("--data-root", default=None, help="data folder (default: the run's data.root)")


def open_run(args: argparse.Namespace) -> LoadedRun:
    return load_run(args.run, args.checkpoint, args.data_root)


def add_force_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="write into a folder that already holds files")


def check_target(out: Path, force: bool, flag: str) -> None:
    """An output folder the command may write: new, empty, or non-empty with --force. Checked
    before the run is loaded, so a refusal costs nothing and overwrites nothing."""
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{flag} {out}: is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise RunDirError(f"{flag} {out}: the folder is not empty; choose a new folder, or pass --force to write into it")
