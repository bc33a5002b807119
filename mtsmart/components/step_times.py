"""The loop's own step clock (`train.record_step_times`): for each optimizer step, the examples and
padded tokens it trained on and the wall and CPU time at its end, written to `step_times.tsv`.

Benchmarks time `mtsmart train` itself from these rows (scripts/bench_throughput.py): the steps
after a warm-up, from the end of one step to the end of the last, model loading, evaluation and
checkpoints outside the window. CPU time is this process's (all its threads), immune to other
jobs on the machine when the run has one intra-op thread.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from mtsmart.support.io import atomic_write_text

COLUMNS = ("step", "examples", "tokens", "wall_s", "cpu_s")


@dataclass
class StepTimes:
    rows: list[tuple[int, int, int, float, float]] = field(default_factory=list)

    def record(self, step: int, examples: int, tokens: int) -> None:
        """Optimizer step `step` has just been applied."""
        self.rows.append((step, examples, tokens, time.perf_counter(), time.process_time()))

    def write(self, path: Path) -> None:
        lines = ["\t".join(COLUMNS)] + ["\t".join(map(str, row)) for row in self.rows]
        atomic_write_text(path, "\n".join(lines) + "\n")


def read_step_times(path: Path) -> list[dict[str, float]]:
    """The rows of a `step_times.tsv`, as numbers."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if not lines or tuple(lines[0].split("\t")) != COLUMNS:
        raise ValueError(f"{path}: not a step_times.tsv (expected the header {COLUMNS})")
    return [{key: float(value) for key, value in zip(COLUMNS, line.split("\t"))} for line in lines[1:]]
