"""What fusing AdamW is worth: mtsmart's optimizer (build_optimizer: fused AdamW) against the same
parameter groups in torch's per-tensor loop (its CPU default before `fused=True`).

    python scripts/bench_adamw.py            # the packaged MiniLM with its RTE head
    python scripts/bench_adamw.py --quick    # tiny random BERT

Only the optimizer step is timed, on gradients set once (the step's cost does not depend on their
values); the two alternate at each repeat and medians are printed. tests/test_throughput.py checks
that the two give the same update.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from mtsmart.components import build  # noqa: E402
from mtsmart.options.config import load_config  # noqa: E402


def unfused(optimizer: torch.optim.AdamW) -> torch.optim.AdamW:
    """The same parameter groups and hyper-parameters in torch's per-tensor Python loop
    (`_single_tensor_adam`): build_optimizer before fused=True."""
    groups = [{"params": group["params"], "weight_decay": group["weight_decay"]} for group in optimizer.param_groups]
    d = optimizer.defaults
    return torch.optim.AdamW(groups, lr=d["lr"], betas=d["betas"], eps=d["eps"], fused=False, foreach=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny random BERT (the tests' smoke run)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(None, ["tasks=[rte]", f"model.name_or_path={'tiny' if args.quick else 'minilm'}"])
    torch.manual_seed(0)
    specs = build.load_specs(cfg)
    model = build.build_model(cfg, specs, build.build_tokenizer(cfg), torch.device("cpu"))
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    optimizers = {"fused": build.build_optimizer(model, cfg)}
    optimizers["per-tensor"] = unfused(optimizers["fused"])
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for r in range(args.repeats + 1):
        for name, optimizer in optimizers.items():
            start = time.perf_counter()
            optimizer.step()
            if r:  # the first step allocates the moment buffers
                times[name].append(time.perf_counter() - start)
    fused, loop = statistics.median(times["fused"]), statistics.median(times["per-tensor"])
    params = sum(p.numel() for p in model.parameters())
    print(f"{cfg.model.name_or_path}: {params / 1e6:.1f} M parameters, {args.threads} thread(s), median of {args.repeats} steps")
    print(f"  fused AdamW       {1000 * fused:8.2f} ms")
    print(f"  per-tensor AdamW  {1000 * loop:8.2f} ms")
    print(f"  per-tensor / fused  {loop / fused:.2f}x")


if __name__ == "__main__":
    main()
