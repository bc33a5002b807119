"""How close a training step comes to this machine's matrix-product rate (issue 29).

    python scripts/bench_mfu.py                 # MiniLM, batch 16 × 128, fp32 and bf16, 1 and 2 threads
    python scripts/bench_mfu.py --quick         # tiny random BERT: a smoke run of the script

Side by side in one run, per precision and thread count:

- the GEMM rate: every linear layer of the encoder applied once to a (batch · length) × in
  matrix in the step's dtype (bf16 tensors under bf16, as autocast feeds the kernels), FLOPs
  2 · tokens · (in · out) summed over the layers, over the time of the pass;
- the step's achieved rate: the linear-layer FLOPs a step needs, over its time. A plain step is
  one forward F and one backward into every parameter Bθ (= Bx + Bw, each as many FLOPs as F):
  3 F. SMART K=1 is 3 F + 1 Bx + 2 Bθ = 8 F (docs/performance.md, "What a step costs");
- their ratio, the step's model-FLOP utilisation (MFU) against the GEMM rate.

Attention's batched products and everything element-wise are not counted: they are what the
step spends beyond its linear layers. Steps and GEMM passes are timed by the wall clock,
interleaved round by round (bench_step.py's `timed`), medians reported.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_step  # noqa: E402  (scripts/: the model, batch, steps and the interleaved timer)

PASSES = {"plain": 3, "SMART K=1": 8}  # linear-layer FLOPs of a step in units of one forward (F)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    return [module for module in model.encoder.modules() if isinstance(module, nn.Linear)]


def forward_flops(model: nn.Module, tokens: int) -> int:
    """FLOPs of one forward through the encoder's linear layers: 2 · tokens · in · out each."""
    return sum(2 * tokens * layer.in_features * layer.out_features for layer in linear_layers(model))


def gemm_pass(model: nn.Module, tokens: int, precision: str) -> Callable[[], None]:
    """Every linear layer once, on inputs of its shape in the step's dtype (no autograd)."""
    dtype = DTYPES[precision]
    layers = [(torch.randn(tokens, layer.in_features, dtype=dtype), layer.weight.detach().to(dtype))
              for layer in linear_layers(model)]

    def run() -> None:
        with torch.no_grad():
            for inputs, weight in layers:
                F.linear(inputs, weight)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    step_args = argparse.Namespace(quick=args.quick, batch_size=4 if args.quick else 16, seq_len=16 if args.quick else 128)
    model, batch = bench_step.build_model_and_batch(step_args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    tokens = batch.input_ids.numel()
    unit = forward_flops(model, tokens)
    steps = {"plain": bench_step.make_step(model, batch, optimizer, None),
             "SMART K=1": bench_step.make_step(model, batch, optimizer, bench_step.mtsmart_term(model, batch, 1))}
    precisions = args.precisions.split(",")
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        variants = {}
        for precision in precisions:
            variants[f"gemm [{precision}]"] = gemm_pass(model, tokens, precision)
            for name, step in steps.items():
                variants[f"{name} [{precision}]"] = bench_step.in_precision(step, precision)
        medians = {name: statistics.median(times) for name, times in bench_step.timed(variants, 2, args.repeats).items()}
        for precision in precisions:
            gemm_rate = unit / medians[f"gemm [{precision}]"]
            for name, passes in PASSES.items():
                seconds = medians[f"{name} [{precision}]"]
                rate = passes * unit / seconds
                rows.append((threads, precision, name, seconds, rate, gemm_rate, rate / gemm_rate))
    print(f"\nbatch {batch.input_ids.shape[0]} × {batch.input_ids.shape[1]} tokens; one forward through the "
          f"linear layers = {unit / 1e9:.1f} GFLOP; medians of {args.repeats} rounds")
    print(f"{'threads':>7} {'prec':>5} {'step':>10} {'step s':>8} {'GFLOP/s':>8} {'GEMM GFLOP/s':>13} {'MFU':>6}")
    for threads, precision, name, seconds, rate, gemm_rate, mfu in rows:
        print(f"{threads:>7} {precision:>5} {name:>10} {seconds:>8.3f} {rate / 1e9:>8.1f} {gemm_rate / 1e9:>13.1f} {mfu:>6.0%}")


if __name__ == "__main__":
    main()
