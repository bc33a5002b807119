"""Step time of mtsmart against batch shape: plain and SMART steps on fixed full-length batches.

    python scripts/bench_scaling.py            # packaged MiniLM, shapes 16×64 … 32×128
    python scripts/bench_scaling.py --quick    # tiny random BERT, two small shapes

One optimizer step = mtsmart.step.objective.Objective + clipping + the Bregman-wrapped AdamW step,
on components built by mtsmart.components.build from the same config overrides `mtsmart train` takes. The
batches have no padding, so every one of the B × T positions costs what a real token costs.
Plain and SMART alternate at each repeat; medians are printed, after one warm-up step.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import NUM_LABELS, TASK, Setting, add_setting_arguments, setting_from  # noqa: E402
from mtsmart.components import build  # noqa: E402
from mtsmart.regularisers.registry import build_adversary  # noqa: E402
from mtsmart.tasks.batch import Batch  # noqa: E402
from mtsmart.options.config import load_config  # noqa: E402
from mtsmart.step.objective import Objective  # noqa: E402
from mtsmart.tasks.types import task_types_of  # noqa: E402

PLAIN = ["adversarial.method=none", "bregman.mu=0"]
SMART = ["adversarial.method=smart", "smart.steps=1", "bregman.mu=0"]


def step_of(setting: Setting, overrides: list[str], batch: Batch) -> Callable[[], None]:
    """One optimizer step of mtsmart on a fixed batch, with the components `mtsmart train` builds."""
    cfg = load_config(None, setting.mtsmart_overrides(setting.seed, Path("unused")) + overrides)
    torch.manual_seed(setting.seed)
    specs = build.load_specs(cfg)
    model = build.build_model(cfg, specs, build.build_tokenizer(cfg), torch.device("cpu")).train()
    bregman = build.build_bregman(model, cfg, total_updates=1000)
    adversary = build_adversary(cfg.regulariser_options(), task_types_of(specs))
    autocast = build.autocast_factory(setting.precision, torch.device("cpu"))

    def step() -> None:
        Objective(adversary, bregman, lambda loss: loss.backward(), autocast).train_microbatch(model, batch)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        bregman.step()
        bregman.zero_grad()

    return step


def full_length_batch(batch_size: int, seq_len: int, vocab_size: int) -> Batch:
    ids = torch.randint(1000, vocab_size, (batch_size, seq_len))
    return Batch(task=TASK, input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids),
                 labels=torch.randint(0, NUM_LABELS, (batch_size,)))


def cost_scaling(setting: Setting, shapes: list[tuple[int, int]], repeats: int) -> None:
    cfg = load_config(None, setting.mtsmart_overrides(setting.seed, Path("unused")))
    vocab_size = len(build.build_tokenizer(cfg))
    now = time.process_time if setting.cpu_clock else time.perf_counter
    print(f"step time ({'CPU' if setting.cpu_clock else 'wall'} s) against shape (fixed full-length batches, no padding; "
          f"median of {repeats}, after one warm-up step on the first shape):")
    print(f"  {'batch x length':>15s} {'plain s':>8s} {'SMART s':>8s} {'SMART/plain':>11s} {'plain ms/token':>14s}")
    first = True
    for batch_size, seq_len in shapes:
        torch.manual_seed(setting.seed)
        batch = full_length_batch(batch_size, seq_len, vocab_size)
        steps = {"plain": step_of(setting, PLAIN, batch), "SMART": step_of(setting, SMART, batch)}
        times: dict[str, list[float]] = {name: [] for name in steps}
        for r in range(repeats + int(first)):
            for name, step in steps.items():  # interleaved
                start = now()
                step()
                if r or not first:  # the very first run (allocator, lazy init) is a warm-up
                    times[name].append(now() - start)
        first = False
        plain, smart = statistics.median(times["plain"]), statistics.median(times["SMART"])
        print(f"  {f'{batch_size} x {seq_len}':>15s} {plain:8.3f} {smart:8.3f} {smart / plain:11.2f} "
              f"{1000 * plain / (batch_size * seq_len):14.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_setting_arguments(parser, steps=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
    setting = setting_from(args, parser)
    shapes = [(2, 16), (2, 32)] if args.quick else [(16, 64), (16, 128), (16, 256), (8, 128), (32, 128)]
    print(f"torch {torch.__version__}, {setting.threads} thread(s); load average before: {os.getloadavg()}")
    cost_scaling(setting, shapes, args.repeats)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
