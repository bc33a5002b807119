"""Time one optimizer step of plain fine-tuning, SMART and every adversarial method.

    python scripts/bench_step.py              # packaged MiniLM, batch 16 × 128 tokens, CPU, 2 threads
    python scripts/bench_step.py --quick      # tiny random BERT: a smoke run of the script
    python scripts/bench_step.py --only methods --methods fgm,pgd-k3   # a subset of the methods
    python scripts/bench_step.py --precision both   # fp32 and bf16 autocast side by side, with speed-ups

A step = forward + losses + backward + AdamW step, on one fixed batch, in one process. Every
variant gets --warmup untimed runs, then --repeats rounds time each variant once in turn
(interleaved, so a change in machine load hits all variants alike; every other round in reverse
order); the median and the minimum are reported, with the load average before and after.

Two suites, timed in the same interleaved rounds unless --only picks one:

- smart: plain fine-tuning and SMART K=1/K=2 against SMART's op-count floor (below) and
  smart-pytorch's SMARTLoss;
- methods: each method of mtsmart.regularisers (--methods, default all) and plain fine-tuning
  (method none), each step through the training loop's own `Objective` with
  `build_adversary(<the method's options>, task types)`, a BregmanProximal with
  mu = 0 and AdamW; reported as time and ratio to plain, beside the passes each method makes.

The floor of SMART with K ascent steps, from measured units (docs/performance.md explains it):

    floor(K) = t_plain + K · t_fwd_bwd_inputs + t_fwd_bwd_params

- t_plain: the plain step (clean forward, task loss, full backward, AdamW). SMART shares all of
  it: the task loss and the outer term are summed and backpropagated once, and the outer term's
  gradient through the clean output f(x) and through x joins the task loss's there.
- t_fwd_bwd_inputs: one ascent step: forward of x + δ (x detached), inner divergence, backward
  to δ only; timed twice, relying on autograd pruning (what SMART's ascent does) and with the
  parameters frozen (the alternative), and the floor takes the cheaper.
- t_fwd_bwd_params: the outer term's own extra work: forward of x + δ, divergence, backward into
  every encoder/head parameter and into x (a leaf here), but not into the word-embedding table,
  whose backward runs once for both branches in the SMART step (their gradients meet at x).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from mtsmart.regularisers.registry import build_adversary  # noqa: E402
from mtsmart.tasks.types import task_types_of  # noqa: E402
from mtsmart.options.regularisers import (  # noqa: E402
    FGMConfig, FGSMConfig, FreeLBConfig, GradientPenaltyConfig, PGDConfig, R3FConfig, RDropConfig,
)
from mtsmart.support.allocator import keep_freed_memory  # noqa: E402
from mtsmart.tasks.batch import Batch  # noqa: E402
from mtsmart.regularisers.smart_method import SmartRegularizer  # noqa: E402
from mtsmart.regularisers.bregman import BregmanProximal  # noqa: E402
from mtsmart.options.bregman import BregmanConfig  # noqa: E402
from mtsmart.arithmetic.divergence import symmetric_kl  # noqa: E402
from mtsmart.components import build  # noqa: E402
from mtsmart.options.config import load_config  # noqa: E402
from mtsmart.model.multitask import MultiTaskModel, output_fn, task_output  # noqa: E402
from mtsmart.arithmetic.perturbation import token_mask  # noqa: E402
from mtsmart.arithmetic.rng import snapshot  # noqa: E402
from mtsmart.options.smart import SmartConfig  # noqa: E402
from mtsmart.tasks.spec import TaskSpec  # noqa: E402
from mtsmart.step.objective import Objective  # noqa: E402
from mtsmart.tasks.types import TASK_TYPES  # noqa: E402

TASK = "bench"
SPEC = TaskSpec(name=TASK, type="classification", metrics=("accuracy",), labels=("a", "b", "c"))

# The methods suite: name → (adversarial.* options, the passes one step makes). Passes are counted
# over the whole encoder: F = forward, Bx = input-only backward (to x, δ or W; no weight-gradient
# GEMMs), Bθ = backward into every parameter. Bθ runs once per graph the final loss goes through.
METHODS: dict[str, tuple[object, str]] = {
    "none": (None, "1 F + 1 Bθ"),
    "fgsm": (FGSMConfig(), "2 F + 1 Bx + 2 Bθ"),
    "fgm": (FGMConfig(), "2 F + 1 Bx + 2 Bθ"),
    "pgd-k1": (PGDConfig(steps=1), "2 F + 1 Bx + 2 Bθ"),  # = FGM: r_1 from the clean gradient
    "pgd-k3": (PGDConfig(steps=3), "4 F + 3 Bx + 2 Bθ"),
    "freelb-k1": (FreeLBConfig(steps=1), "1 F + 1 Bθ"),  # no clean forward; δ's gradient comes free
    "freelb-k3": (FreeLBConfig(steps=3), "3 F + 3 Bθ"),
    "gradient_penalty": (  # math attention kernel; the final backward also runs through the Bx graph
        GradientPenaltyConfig(), "1 F + 1 Bx (create_graph) + 1 double backward"),
    "r3f": (R3FConfig(), "2 F + 2 Bθ"),
    "rdrop": (RDropConfig(), "2 F + 2 Bθ"),
    "smart-k1": (SmartConfig(), "3 F + 1 Bx + 2 Bθ"),  # SmartConfig(): K = 1
    "fgm-matrix": (FGMConfig(scope="matrix"), "2 F + 2 Bθ"),  # ∇_W read in the clean backward
    "pgd-k3-matrix": (PGDConfig(scope="matrix", steps=3), "4 F + 2 Bx + 2 Bθ"),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny random BERT and a small batch (smoke run)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default 2; 1 with --quick)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time by the process's CPU time instead of the wall clock: with --threads 1, "
                             "the work a step does, whatever else the machine runs")
    parser.add_argument("--glibc-malloc-defaults", action="store_true",
                        help="leave glibc's malloc as it is; by default the script keeps freed memory "
                             "as the trainer does (train.keep_freed_memory, mtsmart/support/allocator.py)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "both"), default="fp32",
                        help="autocast of every variant; both: each variant in fp32 and bf16, interleaved in the "
                             "same rounds, reported per precision and as bf16/fp32 speed-ups")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (>= 3)")
    parser.add_argument("--only", choices=("smart", "methods"), default=None,
                        help="time one suite only (default: both, in the same interleaved rounds)")
    parser.add_argument("--methods", default="all",
                        help=f"comma-separated methods of the methods suite, or all: {','.join(METHODS)}")
    args = parser.parse_args()
    if args.repeats < 3:
        parser.error("--repeats must be >= 3 (the median of fewer rounds is one disturbed run)")
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (the first step allocates AdamW's moments)")
    args.methods = list(METHODS) if args.methods == "all" else [m.strip() for m in args.methods.split(",")]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from all or {','.join(METHODS)}")
    if args.quick:
        args.batch_size, args.seq_len, args.repeats = 4, 16, 5
    if args.threads is None:
        # Tiny tensors gain nothing from a second thread, and a busy machine's thread pool
        # spinning would dominate the smoke run's time.
        args.threads = 1 if args.quick else 2
    return args


def build_model_and_batch(args: argparse.Namespace) -> tuple[MultiTaskModel, Batch]:
    """The model `mtsmart train` would build (mtsmart.components.build) with one 3-class head, and a fixed batch."""
    torch.manual_seed(0)
    overrides = ["model.name_or_path=tiny", "model.tiny_hidden_size=32"] if args.quick else ["model.name_or_path=minilm"]
    cfg = load_config(None, overrides)
    tokenizer = build.build_tokenizer(cfg)
    model = build.build_model(cfg, {TASK: SPEC}, tokenizer, torch.device("cpu")).train()  # dropout on, as in training
    vocab_size = len(tokenizer)
    # Random ids, no padding: every one of the B × T positions costs what a real token costs.
    ids = torch.randint(1000, vocab_size, (args.batch_size, args.seq_len))
    batch = Batch(
        task=TASK,
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        token_type_ids=torch.zeros_like(ids),
        labels=torch.randint(0, 3, (args.batch_size,)),
    )
    return model, batch


# --------------------------------------------------------------------------- full steps


def make_step(model, batch, optimizer, regularizer: Callable | None) -> Callable[[], None]:
    """One optimizer step; `regularizer(embeds, clean, clean_rng) -> loss term`, None for plain."""

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        clean_rng = snapshot(batch.input_ids.device)  # so smart.dropout=shared can replay the masks
        embeds = model.word_embeddings(batch.input_ids)  # x
        clean = task_output(model, batch, inputs_embeds=embeds)  # f(x), shared with Rs
        loss = F.cross_entropy(clean, batch.labels)
        if regularizer is not None:
            loss = loss + regularizer(embeds, clean, clean_rng)
        loss.backward()
        optimizer.step()

    return step


def mtsmart_term(model, batch, steps: int) -> Callable:
    smart = SmartRegularizer(SmartConfig(steps=steps))
    return lambda embeds, clean, rng: smart.regularize(model, batch, embeds, clean, TASK_TYPES["classification"], clean_rng=rng).loss


def peer_term(model, batch, steps: int) -> Callable | None:
    """smart-pytorch 0.0.4's SMARTLoss fed with the word-embedding output x (not the full
    embedding output, docs/method.md "What x is"), with its README's divergences; None if not installed."""
    try:
        from smart_pytorch import SMARTLoss, kl_loss, sym_kl_loss
    except ImportError:
        return None
    loss = SMARTLoss(eval_fn=output_fn(model, batch), loss_fn=kl_loss, loss_last_fn=sym_kl_loss, num_steps=steps)
    return lambda embeds, clean, rng: loss(embeds, clean)  # independent dropout masks


# --------------------------------------------------------------------------- units of the floor


def clean_inputs(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """x and f(x) without graph, computed once: the units time only the work the floor counts."""
    with torch.no_grad():
        x = model.word_embeddings(batch.input_ids)
        return x, output_fn(model, batch)(x)


def fwd_bwd_inputs(model, batch, freeze_params: bool = False) -> Callable[[], None]:
    """One ascent step: forward of x + δ (x detached), divergence, gradient w.r.t. δ only.

    freeze_params: turn requires_grad off on every parameter for the step, the alternative to
    relying on autograd pruning the parameter paths (measured, docs/performance.md).
    """
    forward, (x, clean) = output_fn(model, batch), clean_inputs(model, batch)
    mask = token_mask(batch.attention_mask, x.dtype)

    def unit() -> None:
        flags = [p.requires_grad for p in model.parameters()]
        if freeze_params:
            model.requires_grad_(False)
        try:
            delta = (torch.randn_like(x) * 1e-5 * mask).requires_grad_()
            torch.autograd.grad(symmetric_kl(forward(x + delta), clean), inputs=delta)
        finally:
            for p, flag in zip(model.parameters(), flags):
                p.requires_grad_(flag)

    return unit


def fwd_bwd_params(model, batch) -> Callable[[], None]:
    """The outer term's extra work: forward of x + δ and backward into θ and x, not the table."""
    forward, (x, clean) = output_fn(model, batch), clean_inputs(model, batch)

    def unit() -> None:
        model.zero_grad(set_to_none=True)
        leaf = x.clone().requires_grad_()  # a leaf: the gradient reaches x, not the embedding table
        symmetric_kl(forward(leaf + torch.randn_like(x) * 1e-5), clean).backward()

    return unit


# --------------------------------------------------------------------------- every adversarial method


def method_step(model, batch, optimizer, method: str) -> Callable[[], None]:
    """One optimizer step of `method` exactly as the trainer takes it (one micro-batch; the
    precision is the caller's autocast, see `in_precision`)."""
    adversary = build_adversary(METHODS[method][0], task_types_of(model.specs))
    # mu = 0: no teacher, no Bregman term; the wrapper only steps the shared AdamW.
    bregman = BregmanProximal(optimizer, model, BregmanConfig(mu=0.0), total_updates=1)

    def step() -> None:
        bregman.zero_grad()  # the smart suite's variants leave their gradients behind
        Objective(adversary, bregman, lambda loss: loss.backward(), contextlib.nullcontext).train_microbatch(model, batch)
        bregman.step()

    return step


def method_variant(method: str) -> str:
    return f"method {method}"


# --------------------------------------------------------------------------- timing


def timed(
    variants: dict[str, Callable[[], None]], warmup: int, repeats: int, clock: Callable[[], float] = time.perf_counter
) -> dict[str, list[float]]:
    """Times of each variant by `clock` over `repeats` interleaved rounds after `warmup` runs each."""
    for run in variants.values():
        for _ in range(warmup):
            run()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    faults: dict[str, list[int]] = {name: [] for name in variants}
    for round_ in range(repeats):
        # Every other round runs the variants in reverse, so no variant always follows the same one.
        order = list(variants.items()) if round_ % 2 == 0 else list(reversed(variants.items()))
        for name, run in order:
            faults_before, start = minor_page_faults(), clock()
            run()
            samples[name].append(clock() - start)
            faults[name].append(minor_page_faults() - faults_before)
        print(f"round {round_ + 1}/{repeats} done, load average {load_average()}", flush=True)
    print("minor page faults per step (median): " + "; ".join(
        f"{name} {statistics.median(counts):.0f}" for name, counts in faults.items()))
    return samples


def minor_page_faults() -> int:
    """Pages the kernel had to map for this process so far (fresh memory costs one each)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


INPUT_UNITS = ("unit t_fwd_bwd_inputs", "unit t_fwd_bwd_inputs, params frozen")


def floor(times: dict[str, float], k: int) -> float:
    """floor(K) = t_plain + K · t_fwd_bwd_inputs + t_fwd_bwd_params, with the cheaper of the two
    ways to take an input-only gradient, so the floor never favours the implementation."""
    t_inputs = min(times[name] for name in INPUT_UNITS)
    return times["plain fine-tuning"] + k * t_inputs + times["unit t_fwd_bwd_params"]


def report(samples: dict[str, list[float]], has_peer: bool) -> None:
    """Each variant's median and minimum, the ratios of those, and the median of the ratios
    taken round by round (each round times every variant once, so its ratio sees one load)."""
    rounds = range(len(samples["plain fine-tuning"]))
    by_round = [{name: times[i] for name, times in samples.items()} for i in rounds]
    for label, statistic in (("median", statistics.median), ("minimum", min)):
        times = {name: statistic(values) for name, values in samples.items()}
        print(f"{label}:")
        for name, seconds in times.items():
            print(f"  {name:40s} {seconds * 1000:9.1f} ms")
        for k in (1, 2):
            print(f"  {f'floor K={k}':40s} {floor(times, k) * 1000:9.1f} ms   "
                  f"(t_plain + {k}·t_fwd_bwd_inputs + t_fwd_bwd_params)")
    print("ratios (median of the per-round ratios; in brackets: ratio of the medians, ratio of the minima):")
    ratios = {f"SMART K={k} / floor K={k}": (lambda t, k=k: t[f"SMART K={k}"] / floor(t, k)) for k in (1, 2)}
    if has_peer:
        ratios.update({
            f"SMART K={k} / smart-pytorch K={k}": (lambda t, k=k: t[f"SMART K={k}"] / t[f"smart-pytorch 0.0.4 K={k}"])
            for k in (1, 2)
        })
    ratios["SMART K=1 / plain"] = lambda t: t["SMART K=1"] / t["plain fine-tuning"]
    for name, ratio in ratios.items():
        paired = statistics.median(ratio(t) for t in by_round)
        of_medians = ratio({n: statistics.median(v) for n, v in samples.items()})
        of_minima = ratio({n: min(v) for n, v in samples.items()})
        print(f"  {name:36s} {paired:.3f}   ({of_medians:.3f}, {of_minima:.3f})")


def report_methods(samples: dict[str, list[float]], methods: list[str]) -> None:
    """Median and minimum of each method, the ratio of medians to plain, and the range of the
    per-round ratios (a method's time over plain's in the same round: how noisy the ratio is)."""
    plain = samples[method_variant("none")]
    print("methods through the Objective (ms; ratio = median / plain's median; rounds = per-round ratios):")
    print(f"  {'method':16s} {'median':>8s} {'minimum':>8s} {'ratio':>6s} {'rounds':>11s}   passes")
    for method in methods:
        times = samples[method_variant(method)]
        rounds = [t / p for t, p in zip(times, plain)]
        print(f"  {method:16s} {statistics.median(times) * 1000:8.0f} {min(times) * 1000:8.0f} "
              f"{statistics.median(times) / statistics.median(plain):6.2f} {min(rounds):5.2f}–{max(rounds):<5.2f}   "
              f"{METHODS[method][1]}")
    print("  raw seconds per round: " + "; ".join(
        f"{method} " + ",".join(f"{t:.3f}" for t in samples[method_variant(method)]) for method in methods))


def smart_suite(model, batch, optimizer) -> tuple[dict[str, Callable[[], None]], bool]:
    """The smart suite's variants, and whether smart-pytorch's peer is among them."""
    variants = {
        "plain fine-tuning": make_step(model, batch, optimizer, None),
        "SMART K=1": make_step(model, batch, optimizer, mtsmart_term(model, batch, 1)),
        "SMART K=2": make_step(model, batch, optimizer, mtsmart_term(model, batch, 2)),
        "unit t_fwd_bwd_inputs": fwd_bwd_inputs(model, batch),
        "unit t_fwd_bwd_inputs, params frozen": fwd_bwd_inputs(model, batch, freeze_params=True),
        "unit t_fwd_bwd_params": fwd_bwd_params(model, batch),
    }
    peer = peer_term(model, batch, 1)
    if peer is None:
        print("smart-pytorch is not importable: peer timing skipped (pip install --no-deps smart-pytorch==0.0.4)")
    else:
        variants["smart-pytorch 0.0.4 K=1"] = make_step(model, batch, optimizer, peer)
        variants["smart-pytorch 0.0.4 K=2"] = make_step(model, batch, optimizer, peer_term(model, batch, 2))
    return variants, peer is not None


PRECISIONS = ("fp32", "bf16")


def in_precision(run: Callable[[], None], precision: str, device: torch.device = torch.device("cpu")) -> Callable[[], None]:
    """The variant under the precision's autocast on `device`, as the trainer runs a step, ending
    when the device has finished (a GPU runs asynchronously: without the synchronisation the
    clock would time the launches)."""
    if precision not in PRECISIONS:
        raise ValueError(f"in_precision: {precision!r} is not one of {PRECISIONS}")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext

    def wrapped() -> None:
        with autocast():
            run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return wrapped


def split_by_precision(samples: dict[str, list[float]], precisions: list[str]) -> dict[str, dict[str, list[float]]]:
    """{precision: {variant: times}} from names suffixed ` [fp32]` / ` [bf16]`."""
    return {p: {name[: -len(f" [{p}]")]: times for name, times in samples.items() if name.endswith(f" [{p}]")}
            for p in precisions}


def report_speedups(by_precision: dict[str, dict[str, list[float]]]) -> None:
    """bf16 / fp32 speed-up of every variant: fp32 time over bf16 time, per round (the two ran in
    the same round), median over rounds; in brackets the ratio of medians."""
    fp32, bf16 = by_precision["fp32"], by_precision["bf16"]
    print("bf16 speed-up over fp32 (median of per-round fp32/bf16; in brackets: ratio of the medians):")
    for name in fp32:
        paired = statistics.median(f / b for f, b in zip(fp32[name], bf16[name]))
        print(f"  {name:40s} {paired:.2f}x   ({statistics.median(fp32[name]) / statistics.median(bf16[name]):.2f}x)")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    kept = False if args.glibc_malloc_defaults else keep_freed_memory()
    model, batch = build_model_and_batch(args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    variants: dict[str, Callable[[], None]] = {}
    smart_names: list[str] = []
    has_peer = False
    if args.only in (None, "smart"):
        smart_variants, has_peer = smart_suite(model, batch, optimizer)
        variants.update(smart_variants)
        smart_names = list(smart_variants)
    # Plain fine-tuning (method none) is the methods' denominator: always timed with them.
    methods = ["none"] + [m for m in args.methods if m != "none"]
    if args.only in (None, "methods"):
        variants.update({method_variant(m): method_step(model, batch, optimizer, m) for m in methods})

    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    variants = {f"{name} [{p}]": in_precision(run, p) for name, run in variants.items() for p in precisions}

    model_name = "tiny random BERT" if args.quick else "packaged MiniLM (all-MiniLM-L6-v2)"
    print(f"{model_name}, batch {args.batch_size} x {args.seq_len}, CPU, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {'CPU' if args.cpu_time else 'wall'} time, "
          f"median of {args.repeats} interleaved rounds after {args.warmup} warm-ups")
    print(f"malloc keeps freed memory (train.keep_freed_memory): {kept}")
    print(f"load average (1, 5, 15 min) before: {load_average()}")
    start = time.perf_counter()
    samples = timed(variants, args.warmup, args.repeats, time.process_time if args.cpu_time else time.perf_counter)
    print(f"load average (1, 5, 15 min) after: {load_average()}; timing took {time.perf_counter() - start:.0f} s")
    by_precision = split_by_precision(samples, precisions)
    for precision, times in by_precision.items():
        print(f"==== {precision} ====")
        if args.only in (None, "smart"):
            report({name: times[name] for name in smart_names}, has_peer)
        if args.only in (None, "methods"):
            report_methods(times, methods)
    if len(precisions) == 2:
        report_speedups(by_precision)


if __name__ == "__main__":
    main()
