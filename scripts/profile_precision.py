"""Where a training step's time goes in fp32 and under bf16 autocast: torch.profiler's self CPU time
by operator, side by side, for one plain (or SMART) step of the packaged MiniLM.

    python scripts/profile_precision.py                      # plain step, batch 16 × 128, 1 thread
    python scripts/profile_precision.py --method smart       # SMART's Rs (K = 1) on top
    python scripts/profile_precision.py --masks packed       # with model.dropout_masks=packed
    python scripts/profile_precision.py --quick              # tiny random BERT (smoke run)

The step is mtsmart's own (mtsmart.step.objective.Objective + clipping + fused AdamW) on components
built by mtsmart.components.build; after --warmup untimed steps in each precision, --repeats profiled steps
per precision are summed. Printed: each operator's self CPU time in both precisions and its
speed-up, the largest first, and each precision's total — what bf16 speeds up and what it does
not (docs/performance.md).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from mtsmart.components import build  # noqa: E402
from mtsmart.model.packed_dropout import use_packed_dropout  # noqa: E402
from mtsmart.regularisers.registry import build_adversary  # noqa: E402
from mtsmart.tasks.batch import Batch  # noqa: E402
from mtsmart.options.config import load_config  # noqa: E402
from mtsmart.step.objective import Objective  # noqa: E402
from mtsmart.tasks.types import task_types_of  # noqa: E402


def self_times(step, repeats: int) -> dict[str, float]:
    """Self CPU time (ms) per operator over `repeats` steps."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            step()
    return {event.key: event.self_cpu_time_total / 1000 for event in prof.key_averages()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--method", choices=("none", "smart"), default="none")
    parser.add_argument("--masks", choices=("torch", "packed"), default="torch", help="model.dropout_masks")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_args = ["model.name_or_path=tiny", "model.tiny_hidden_size=32"] if args.quick else ["model.name_or_path=minilm"]
    cfg = load_config(None, ["tasks=[rte]", *model_args, f"adversarial.method={args.method}", "bregman.mu=0"])
    torch.manual_seed(0)
    specs = build.load_specs(cfg)
    tokenizer = build.build_tokenizer(cfg)
    model = build.build_model(cfg, specs, tokenizer, torch.device("cpu")).train()
    if args.masks == "packed":  # as the training loop does
        use_packed_dropout(model, cfg.model.attn_implementation)
    bregman = build.build_bregman(model, cfg, total_updates=1000)
    adversary = build_adversary(cfg.regulariser_options(), task_types_of(specs))
    ids = torch.randint(1000, len(tokenizer), (args.batch_size, args.seq_len))
    batch = Batch(task="rte", input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids),
                  labels=torch.randint(0, 2, (args.batch_size,)))
    totals = {}
    for precision in ("fp32", "bf16"):
        autocast = build.autocast_factory(precision, torch.device("cpu"))

        def step() -> None:
            Objective(adversary, bregman, lambda loss: loss.backward(), autocast).train_microbatch(model, batch)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            bregman.step()
            bregman.zero_grad()

        for _ in range(args.warmup):
            step()
        totals[precision] = self_times(step, args.repeats)
    fp32, bf16 = totals["fp32"], totals["bf16"]
    names = sorted(set(fp32) | set(bf16), key=lambda n: -max(fp32.get(n, 0.0), bf16.get(n, 0.0)))
    print(f"{cfg.model.name_or_path}, method {args.method}, {args.masks} dropout masks, batch {args.batch_size} × {args.seq_len}, "
          f"{args.threads} thread(s); self CPU ms per step (mean of {args.repeats}):")
    print(f"  {'operator':44s} {'fp32':>9s} {'bf16':>9s} {'fp32/bf16':>9s}")
    for name in names[: args.top]:
        a, b = fp32.get(name, 0.0) / args.repeats, bf16.get(name, 0.0) / args.repeats
        ratio = f"{a / b:9.2f}" if a and b else f"{'—':>9s}"
        print(f"  {name[:44]:44s} {a:9.1f} {b:9.1f} {ratio}")
    total_a, total_b = sum(fp32.values()) / args.repeats, sum(bf16.values()) / args.repeats
    print(f"  {'all operators':44s} {total_a:9.1f} {total_b:9.1f} {total_a / total_b:9.2f}")


if __name__ == "__main__":
    main()
