"""Arguments every run-reading command shares, and how they become a LoadedRun."""
from __future__ import annotations

import argparse

from mtsmart.run_dir import LoadedRun, load_run
from mtsmart.tables import table  # noqa: F401  (the commands print with it)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="a run directory written by `mtsmart train`")
    parser.add_argument("--checkpoint", default="last", help="best, last (the latest step checkpoint) or a checkpoint path")
    parser.add_argument("--data-root", default=None, help="data folder (default: the run's data.root)")


def open_run(args: argparse.Namespace) -> LoadedRun:
    return load_run(args.run, args.checkpoint, args.data_root)
