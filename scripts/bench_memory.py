"""Peak memory of one training step: plain fine-tuning, SMART, SMART + Bregman.

    python scripts/bench_memory.py            # packaged MiniLM (model.name_or_path=minilm), batch 16 × 128
    python scripts/bench_memory.py --quick    # the tiny random BERT, batch 4 × 32 (for tests)

Each variant runs in a fresh subprocess (so one variant's allocator caches do not hide
another's peak): build the model, optimizer, Bregman wrapper and adversary as the trainer does;
run one warm-up step (AdamW allocates its moments there); then measure a second step.
CPU: the peak RSS of that step (/proc/self/status VmHWM after resetting it through
/proc/self/clear_refs) minus the RSS before it (after glibc's malloc_trim: live memory only). GPU: torch.cuda.max_memory_allocated over the
step minus the memory allocated before it. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

VARIANTS = {  # name → config overrides
    "plain fine-tuning": ["adversarial.method=none", "bregman.mu=0"],
    "SMART (Rs)": ["adversarial.method=smart", "bregman.mu=0"],
    "SMART + Bregman": ["adversarial.method=smart", "bregman.mu=1"],
}


def proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def release_free_heap() -> None:
    """Return freed heap pages to the OS (glibc malloc_trim), so RSS counts live memory only.

    Without it the RSS before the measured step still holds the warm-up step's freed buffers,
    and the step's peak would look smaller than it is.
    """
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the figures then include the allocator's retained memory


def reset_peak_rss() -> None:
    """Writing 5 to clear_refs resets VmHWM to the current RSS (Linux ≥ 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def measure(model_name: str, batch: int, seq: int, overrides: list[str]) -> dict:
    """One variant, in this process: memory of the second training step."""
    import torch

    from mtsmart.components import build
    from mtsmart.regularisers.registry import build_adversary
    from mtsmart.tasks.batch import Batch
    from mtsmart.options.config import load_config
    from mtsmart.step.objective import Objective
    from mtsmart.tasks.types import task_types_of

    cfg = load_config(None, [f"model.name_or_path={model_name}", "tasks=[rte]", *overrides])
    device = build.device_of()
    torch.manual_seed(0)
    specs = build.load_specs(cfg)
    tokenizer = build.build_tokenizer(cfg)
    model = build.build_model(cfg, specs, tokenizer, device).train()
    bregman = build.build_bregman(model, cfg, total_updates=100)
    adversary = build_adversary(cfg.regulariser_options(), task_types_of(specs))
    ids = torch.randint(1000, len(tokenizer), (batch, seq), device=device)  # full-length rows: the worst case
    data = Batch(task="rte", input_ids=ids, attention_mask=torch.ones_like(ids),
                 token_type_ids=torch.zeros_like(ids), labels=torch.randint(0, 2, (batch,), device=device),
                 example_ids=list(range(batch)))

    def step() -> None:
        Objective(adversary, bregman, lambda loss: loss.backward(), _nullcontext).train_microbatch(model, data)
        bregman.step()
        bregman.zero_grad()

    step()  # warm-up: optimizer moments, allocator pools
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"device": "cuda", "before_mib": before / 2**20, "peak_mib": peak / 2**20, "step_mib": (peak - before) / 2**20}
    release_free_heap()
    before = proc_status_kib("VmRSS")
    reset_peak_rss()
    step()
    peak = proc_status_kib("VmHWM")
    return {"device": "cpu", "before_mib": before / 1024, "peak_mib": peak / 1024, "step_mib": (peak - before) / 1024}


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()


def run_variant(model_name: str, batch: int, seq: int, overrides: list[str]) -> dict:
    command = [sys.executable, __file__, "--child", json.dumps([model_name, batch, seq, overrides])]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"variant {overrides} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny random BERT, batch 4 × 32")
    parser.add_argument("--model", default=None, help="model.name_or_path (default minilm; tiny with --quick)")
    parser.add_argument("--batch", type=int, default=None, help="examples per step (default 16; 4 with --quick)")
    parser.add_argument("--seq", type=int, default=None, help="tokens per example (default 128; 32 with --quick)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(*json.loads(args.child))))
        return 0
    model = args.model or ("tiny" if args.quick else "minilm")
    batch = args.batch or (4 if args.quick else 16)
    seq = args.seq or (32 if args.quick else 128)
    rows = {name: run_variant(model, batch, seq, overrides) for name, overrides in VARIANTS.items()}
    device = next(iter(rows.values()))["device"]
    kind = "RSS" if device == "cpu" else "allocated"
    print(f"model {model}, batch {batch} × {seq}, device {device}\n")
    print(f"| variant | {kind} before the step (MiB) | peak during the step (MiB) | step's extra memory (MiB) |")
    print("|---|---:|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {row['before_mib']:.0f} | {row['peak_mib']:.0f} | {row['step_mib']:.0f} |")
    print("\n" + json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
