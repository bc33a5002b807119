"""The cost of the negative-transfer diagnostics (`train.task_gradients_every`) against a training step:

    python scripts/bench_task_gradients.py              # packaged MiniLM, batch 16 × 128, fp32
    python scripts/bench_task_gradients.py --quick      # tiny random BERT (the test's smoke run)

One process, one intra-op thread, timed by CPU time; each round times a plain training step
(forward, cross-entropy, backward, fused AdamW) and then the monitor's work at a diagnosed step
(`TaskGradientMonitor.observe` on the step's gradients, two tasks' running means held), in turn.
Prints the medians and the diagnostics' share of training time at `every` = 1, 10 and 50.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtsmart.components.task_gradients import TaskGradientMonitor  # noqa: E402
from mtsmart.model.multitask import MultiTaskModel, load_encoder  # noqa: E402
from mtsmart.tasks.spec import TaskSpec  # noqa: E402

SPEC = TaskSpec(name="a", type="classification", metrics=("accuracy",), labels=("0", "1"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    name, batch, length = ("tiny", 4, 32) if args.quick else ("minilm", 16, 128)
    encoder = load_encoder(name, 30522, tiny_hidden_size=32, tiny_layers=2, tiny_heads=2)
    model = MultiTaskModel(encoder, {"a": SPEC, "b": SPEC}).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    ids = torch.randint(1000, 30000, (batch, length))
    mask, labels = torch.ones_like(ids), torch.randint(0, 2, (batch,))
    monitor = TaskGradientMonitor(["a", "b"], every=1, encoder=model.encoder)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(task="a", input_ids=ids, attention_mask=mask), labels).backward()
        optimizer.step()

    step()
    monitor.observe("a"), monitor.observe("b")  # both running means exist, as in a two-task run
    steps, observes = [], []
    for _ in range(args.rounds):
        start = time.process_time()
        step()
        steps.append(time.process_time() - start)
        start = time.process_time()
        monitor.observe("a")
        observes.append(time.process_time() - start)
    t_step, t_observe = statistics.median(steps), statistics.median(observes)
    parameters = sum(p.numel() for p in model.encoder.parameters())
    print(f"{name}, batch {batch} × {length}, {parameters / 1e6:.1f} M encoder parameters, {args.rounds} rounds, CPU time")
    print(f"training step {1000 * t_step:.0f} ms; diagnostics at a diagnosed step {1000 * t_observe:.1f} ms")
    for every in (1, 10, 50):
        print(f"train.task_gradients_every={every}: {100 * t_observe / (every * t_step):.2f}% of training time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
