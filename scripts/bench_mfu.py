"""How close a training step comes to this machine's matrix-product rate (issue 29).

    python scripts/bench_mfu.py                 # MiniLM, batch 16 × 128, fp32 and bf16, 1 and 2 threads
    python scripts/bench_mfu.py --quick         # tiny random BERT: a smoke run of the script
    python scripts/bench_mfu.py --masks torch   # torch's dropout masks only (default: torch and packed)
    python scripts/bench_mfu.py --device cuda   # on a GPU: the same figures, timed with synchronisation

Side by side in one run, per precision and thread count:

- the GEMM rate: every linear layer of the encoder applied once to a (batch · length) × in
  matrix in the step's dtype (bf16 tensors under bf16, as autocast feeds the kernels), FLOPs
  2 · tokens · (in · out) summed over the layers, over the time of the pass;
- the step's achieved rate: the linear-layer FLOPs a step needs, over its time. A plain step is
  one forward F and one backward into every parameter Bθ (= Bx + Bw, each as many FLOPs as F):
  3 F. SMART K=1 is 3 F + 1 Bx + 2 Bθ = 8 F (docs/performance.md, "What a step costs");
- their ratio, the step's model-FLOP utilisation (MFU) against the GEMM rate;
- per kind of dropout mask (`model.dropout_masks`): torch's, and packed (mtsmart.model.packed_dropout)
  on a copy of the model with the same weights.

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

import copy

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_step  # noqa: E402  (scripts/: the model, batch, steps and the interleaved timer)
from mtsmart.model.packed_dropout import use_packed_dropout  # noqa: E402

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
    device = next(model.parameters()).device
    layers = [(torch.randn(tokens, layer.in_features, dtype=dtype, device=device), layer.weight.detach().to(dtype))
              for layer in linear_layers(model)]

    def run() -> None:
        with torch.no_grad():
            for inputs, weight in layers:
                F.linear(inputs, weight)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", default=None, help="comma-separated CPU thread counts (default 1,2; CPU only)")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--masks", default="torch,packed", help="dropout masks: torch, packed or both")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for option, given, allowed in (("--precisions", args.precisions, DTYPES), ("--masks", args.masks, ("torch", "packed"))):
        unknown = [value for value in given.split(",") if value not in allowed]
        if unknown:
            parser.error(f"{option}: unknown {unknown}; choose from {', '.join(allowed)}")
    if args.device == "cuda" and args.threads is not None:
        parser.error("--threads: CPU thread counts; a GPU run has none to choose")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    device = torch.device(args.device)
    thread_counts = [None] if device.type == "cuda" else [int(t) for t in (args.threads or "1,2").split(",")]
    step_args = argparse.Namespace(quick=args.quick, batch_size=4 if args.quick else 16, seq_len=16 if args.quick else 128)
    model, batch = bench_step.build_model_and_batch(step_args)
    model, batch = model.to(device), batch.to(device)
    tokens = batch.input_ids.numel()
    unit = forward_flops(model, tokens)
    models = {}
    for masks in args.masks.split(","):
        models[masks] = copy.deepcopy(model)
        if masks == "packed":
            use_packed_dropout(models[masks], "sdpa")
    steps = {}
    for masks, copy_ in models.items():
        optimizer = torch.optim.AdamW(copy_.parameters(), lr=1e-5)
        steps[("plain", masks)] = bench_step.make_step(copy_, batch, optimizer, None)
        steps[("SMART K=1", masks)] = bench_step.make_step(copy_, batch, optimizer, bench_step.mtsmart_term(copy_, batch, 1))
    precisions = args.precisions.split(",")
    rows = []
    for threads in thread_counts:
        if threads is not None:
            torch.set_num_threads(threads)
        variants = {}
        for precision in precisions:
            variants[f"gemm [{precision}]"] = bench_step.in_precision(gemm_pass(model, tokens, precision), precision, device)
            for (name, masks), step in steps.items():
                variants[f"{name} [{precision}, {masks}]"] = bench_step.in_precision(step, precision, device)
        medians = {name: statistics.median(times) for name, times in bench_step.timed(variants, 2, args.repeats).items()}
        for precision in precisions:
            gemm_rate = unit / medians[f"gemm [{precision}]"]
            for name, masks in steps:
                seconds = medians[f"{name} [{precision}, {masks}]"]
                rate = PASSES[name] * unit / seconds
                rows.append((threads, precision, masks, name, seconds, rate, gemm_rate, rate / gemm_rate))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\n{where}; batch {batch.input_ids.shape[0]} × {batch.input_ids.shape[1]} tokens; one forward through the "
          f"linear layers = {unit / 1e9:.1f} GFLOP; medians of {args.repeats} rounds")
    print(f"{'threads':>7} {'prec':>5} {'masks':>6} {'step':>10} {'step s':>8} {'GFLOP/s':>8} {'GEMM GFLOP/s':>13} {'MFU':>6}")
    for threads, precision, masks, name, seconds, rate, gemm_rate, mfu in rows:
        print(f"{threads or '-':>7} {precision:>5} {masks:>6} {name:>10} {seconds:>8.3f} {rate / 1e9:>8.1f} "
              f"{gemm_rate / 1e9:>13.1f} {mfu:>6.0%}")
    for threads in thread_counts:
        label = f"{threads} thread(s)" if threads is not None else where
        for masks in models:
            fp32 = {row[3]: row[4] for row in rows if row[:3] == (threads, "fp32", masks)}
            bf16 = {row[3]: row[4] for row in rows if row[:3] == (threads, "bf16", masks)}
            if fp32 and bf16:
                print(f"bf16 speed-up over fp32, {label}, {masks} masks: "
                      + ", ".join(f"{name} {fp32[name] / bf16[name]:.2f}×" for name in fp32))
        if len(models) > 1:
            for precision in precisions:
                times = {(row[2], row[3]): row[4] for row in rows if row[:2] == (threads, precision)}
                print(f"packed / torch masks step time, {label}, {precision}: "
                      + ", ".join(f"{name} {times[('packed', name)] / times[('torch', name)]:.2f}" for name in PASSES))


if __name__ == "__main__":
    main()
