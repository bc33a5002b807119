"""What the throughput benchmarks share: the setting every contender trains in, the step clock and
the measurement it gives, and the command-line options that define them.

Timing, the same for every contender: from the end of the warm-up optimizer step(s) to the end
of the last one, i.e. training steps only (batch collation, forward, backward, clipping, optimizer
and scheduler step, per-step logging). By default the clock is the process's CPU time with one
intra-op thread: on an idle machine that is its wall time, but unlike wall time it does not grow
while other jobs hold the cores (`--wall` switches to wall time).
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TASK = "rte"
NUM_LABELS = 2
TINY = {"hidden": 32, "layers": 2, "heads": 2}  # the --quick encoder, the same for every contender


@dataclass(frozen=True)
class Setting:
    """What every contender shares."""

    model: str  # "minilm" or "tiny"
    data_root: Path
    max_len: int
    batch_size: int
    lr: float
    steps: int  # optimizer steps per run, warm-up included
    warmup: int  # untimed steps at the start of each run
    seed: int
    precision: str = "fp32"  # fp32 or bf16 autocast, the same for every contender
    threads: int = 1  # intra-op threads of every contender
    cpu_clock: bool = True  # time by the process's CPU time (else wall time)

    def mtsmart_overrides(self, seed: int, out: Path) -> list[str]:
        """`mtsmart train` overrides for this setting (the method's own keys come on top)."""
        overrides = [
            f"tasks=[{TASK}]", f"output_dir={out}", f"data.root={self.data_root}", f"data.max_seq_len={self.max_len}",
            f"model.name_or_path={self.model}", f"train.batch_size={self.batch_size}", f"train.lr={self.lr}",
            f"train.max_steps={self.steps}", f"train.seed={seed}", "train.warmup_ratio=0.1",
            f"train.precision={self.precision}",
            "eval.max_examples=1",  # the dev set is still encoded at setup: keep that short
        ]
        if self.model == "tiny":
            overrides += [f"model.tiny_hidden_size={TINY['hidden']}", f"model.tiny_layers={TINY['layers']}",
                          f"model.tiny_heads={TINY['heads']}"]
        return overrides


@dataclass(frozen=True)
class Measurement:
    steps: int
    examples: int
    tokens: int  # padded positions, N × T summed over the timed steps
    wall_seconds: float
    cpu_seconds: float  # CPU time of the process: what the steps cost, whatever else runs on the machine
    cpu_clock: bool = True  # which of the two the figures use

    @property
    def seconds(self) -> float:
        return self.cpu_seconds if self.cpu_clock else self.wall_seconds

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.seconds

    @property
    def wall_examples_per_s(self) -> float:
        return self.examples / self.wall_seconds

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def tokens_per_example(self) -> float:
        return self.tokens / self.examples

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / self.steps


@dataclass
class StepClock:
    """Per-step batch sizes, padded tokens, and wall and CPU times at the end of each step of one run
    (the same columns as `mtsmart train`'s step_times.tsv, mtsmart.components.step_times)."""

    warmup: int
    cpu_clock: bool = True
    examples: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)  # time.perf_counter()
    cpu_ends: list[float] = field(default_factory=list)  # time.process_time(): this process's CPU seconds

    def batch(self, input_ids: torch.Tensor) -> None:
        """A training batch (N, T) was drawn."""
        self.examples.append(int(input_ids.shape[0]))
        self.tokens.append(int(input_ids.numel()))

    def step_end(self) -> None:
        self.ends.append(time.perf_counter())
        self.cpu_ends.append(time.process_time())

    def measurement(self) -> Measurement:
        """The steps after the warm-up: from the end of step `warmup` to the end of the last one."""
        if len(self.ends) <= self.warmup or len(self.examples) != len(self.ends):
            raise RuntimeError(f"clock saw {len(self.examples)} batches and {len(self.ends)} steps; need > {self.warmup}")
        timed, start = slice(self.warmup, None), self.warmup - 1
        return Measurement(len(self.ends) - self.warmup, sum(self.examples[timed]), sum(self.tokens[timed]),
                           self.ends[-1] - self.ends[start], self.cpu_ends[-1] - self.cpu_ends[start], self.cpu_clock)

    @classmethod
    def from_rows(cls, rows: list[dict[str, float]], warmup: int, cpu_clock: bool) -> "StepClock":
        """The clock of a run's step_times.tsv rows (mtsmart.components.step_times.read_step_times)."""
        return cls(warmup, cpu_clock, [int(r["examples"]) for r in rows], [int(r["tokens"]) for r in rows],
                   [r["wall_s"] for r in rows], [r["cpu_s"] for r in rows])


def add_setting_arguments(parser: argparse.ArgumentParser, steps: int) -> None:
    parser.add_argument("--quick", action="store_true", help="tiny random BERT, a few steps (the tests' smoke run)")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MTSMART_DATA", DEFAULT_DATA)))
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--steps", type=int, default=steps, help="optimizer steps per run, warm-up included")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of each run (>= 1)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (1: see docs/performance.md)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="every contender in this precision")
    parser.add_argument("--wall", action="store_true", help="time by wall clock instead of CPU time (needs --threads 1 "
                        "for CPU time to be meaningful; use it on an idle machine with more threads)")


def setting_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Setting:
    if args.threads > 1 and not args.wall:
        parser.error("CPU time sums the threads' time: with --threads > 1 pass --wall (on an idle machine)")
    if not 1 <= args.warmup < args.steps:
        parser.error("need 1 <= --warmup < --steps")
    if not (args.data / "glue" / TASK.upper() / "train.tsv").is_file():
        parser.error(f"no glue/{TASK.upper()}/train.tsv under {args.data} (set MTSMART_DATA or --data)")
    torch.set_num_threads(args.threads)
    return Setting(model="tiny" if args.quick else "minilm", data_root=args.data.resolve(), max_len=args.max_len,
                   batch_size=args.batch_size, lr=args.lr, steps=args.steps, warmup=args.warmup, seed=args.seed,
                   precision=args.precision, threads=args.threads, cpu_clock=not args.wall)
