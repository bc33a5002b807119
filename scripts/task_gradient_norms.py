"""The shared encoder's gradient norm per task: how hard each task pulls on the encoder.

    python scripts/task_gradient_norms.py --run runs/colaB            # the run's last checkpoint and a fresh encoder
    python scripts/task_gradient_norms.py --run runs/colaB --batches 16

For each task of the run: the l2 norm of the encoder's gradient of the task loss on one training
batch (batch 16, length-grouped, dropout on), the median over --batches batches; once for a
fresh pretrained encoder with the run's heads initialised as training starts them (seeded), once
for the run's last checkpoint. docs/results.md ("CoLA in the multi-task mix") uses it.
"""
from __future__ import annotations

import argparse
import statistics

import torch

from mtsmart.data.encoding import encode_split
from mtsmart.data.loader import TaskLoader
from mtsmart.data.readers import read_split
from mtsmart.components import build
from mtsmart.model.multitask import MultiTaskModel, task_output
from mtsmart.components.run_dir import load_run
from mtsmart.tasks.types import task_type_of


def encoder_gradient_norms(model: MultiTaskModel, batches: dict[str, list]) -> dict[str, float]:
    model.train()
    norms = {}
    for task, task_batches in batches.items():
        values = []
        for batch in task_batches:
            model.zero_grad(set_to_none=True)
            task_type_of(model.specs[task]).loss(task_output(model, batch), batch.labels).backward()
            squares = [p.grad.float().pow(2).sum() for p in model.encoder.parameters() if p.grad is not None]
            values.append(float(torch.stack(squares).sum().sqrt()))
        norms[task] = statistics.median(values)
    return norms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a run directory written by `mtsmart train`")
    parser.add_argument("--batches", type=int, default=8, help="batches per task (median reported)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = load_run(args.run, "last")
    batches = {}
    for name, spec in run.specs.items():
        items = encode_split(spec, read_split(spec, "train", run.cfg.data), run.tokenizer, run.cfg.data.max_seq_len)
        loader = TaskLoader(name, items, batch_size=16, seed=0, pad_token_id=run.tokenizer.pad_token_id,
                            shuffle=True, group_by_length=True)
        batches[name] = [loader.next_batch() for _ in range(args.batches)]
    torch.manual_seed(run.cfg.train.seed)
    fresh = build.build_model(run.cfg, run.specs, run.tokenizer, torch.device("cpu"))
    for label, model in (("fresh encoder", fresh), (f"{run.checkpoint.name} of {args.run}", run.model)):
        norms = encoder_gradient_norms(model, batches)
        print(f"{label}: " + ", ".join(f"{task} {value:.2f}" for task, value in norms.items()))


if __name__ == "__main__":
    main()
