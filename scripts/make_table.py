#!/usr/bin/env python3
"""Markdown table of an ablation: one row per variant, one column per task metric plus the
average, mean ± std over seeds (sample std, n−1).

    python scripts/make_table.py runs/ablation [--which final|best]

Reads <root>/<variant>/seed_<n>/results.json as written by `mtsmart train`.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ORDER = ["plain", "rs_only", "bregman_only", "smart"]


def collect(root: Path, which: str) -> dict[str, list[dict[str, float]]]:
    runs: dict[str, list[dict[str, float]]] = {}
    for path in sorted(root.glob("*/seed_*/results.json")):
        results = json.loads(path.read_text(encoding="utf-8"))
        if which not in results:
            raise SystemExit(f"{path}: no {which!r} results")
        scores = {k: v for k, v in results[which].items() if k != "step"}
        runs.setdefault(path.parent.parent.name, []).append(scores)
    return runs


def cell(values: list[float]) -> str:
    mean = statistics.fmean(values) * 100
    if len(values) < 2:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {statistics.stdev(values) * 100:.2f}"


def table(runs: dict[str, list[dict[str, float]]]) -> str:
    metrics = sorted({k for seeds in runs.values() for scores in seeds for k in scores if k != "avg"}) + ["avg"]
    variants = sorted(runs, key=lambda v: (ORDER.index(v) if v in ORDER else len(ORDER), v))
    lines = ["| variant | seeds | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for variant in variants:
        seeds = runs[variant]
        cells = []
        for metric in metrics:
            values = [s[metric] for s in seeds if metric in s]
            cells.append(cell(values) if len(values) == len(seeds) else "n/a")
        lines.append(f"| {variant} | {len(seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--which", choices=("final", "best"), default="final")
    args = parser.parse_args(argv)
    runs = collect(args.root, args.which)
    if not runs:
        print(f"no runs under {args.root} (expected <variant>/seed_<n>/results.json)", file=sys.stderr)
        return 1
    print(f"Scores ×100, {args.which} checkpoint, mean ± std over seeds.\n")
    print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
