"""A run beside another job: `train.threads`' default against every core, side by side in one run.

    python scripts/bench_threads.py --steps 60 --rounds 2

Starts one other job that keeps one core busy (a one-thread float32 matrix-product loop, as another
user's training would), then trains the same short `mtsmart train` run (MiniLM, RTE, plain, batch
16, bf16 where the CPU has it) alternately with `train.threads` at its default (the cores not busy
at start) and with every core (`train.threads=<cores>`, what a run took before the option).
Prints each run's wall time, CPU time (user + system, from the child's resource usage) and the
system share, and the ratios default / every core. Then the same default run with the machine to
itself, for scale. docs/performance.md has the figures and this command.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OTHER_JOB = ("import torch\ntorch.set_num_threads(1)\na = torch.randn(1024, 1024)\n"
             "while True:\n    a = (a @ a).clamp_(-1, 1)\n")


def train(out: Path, steps: int, threads: int | None, data: str) -> dict[str, float]:
    """One `mtsmart train` in a child process: its wall time, CPU time and system share."""
    command = [sys.executable, "-m", "mtsmart", "train", "model.name_or_path=minilm", "tasks=[rte]",
               "adversarial.method=none", "bregman.mu=0", "train.batch_size=16", "data.max_seq_len=128",
               "data.group_by_length=true", f"train.max_steps={steps}", "eval.every_steps=0",
               "eval.max_examples=64", "train.save_every_steps=0", "train.keep_checkpoints=1",
               f"train.log_every_steps={steps}", f"output_dir={out}"]
    if threads is not None:
        command.append(f"train.threads={threads}")
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    env["MTSMART_DATA"] = data
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return {"wall": wall, "cpu": user + system, "system": system / (user + system)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2, help="pairs of runs (default, every core), alternated")
    parser.add_argument("--data", default=os.environ.get("MTSMART_DATA", str(REPO.parent / "shared" / "data")))
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    results: dict[str, list[dict[str, float]]] = {"default": [], f"threads={cores}": []}
    with tempfile.TemporaryDirectory() as scratch:
        other = subprocess.Popen([sys.executable, "-c", OTHER_JOB], env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            time.sleep(2.0)  # the other job is running before the first run samples the load
            for round_index in range(args.rounds):
                for name, threads in (("default", None), (f"threads={cores}", cores)):
                    results[name].append(train(Path(scratch) / f"{name}_{round_index}", args.steps, threads, args.data))
        finally:
            other.kill()
            other.wait()
        idle = train(Path(scratch) / "idle", args.steps, None, args.data)
    print(f"{args.steps} steps of MiniLM on RTE (batch 16), {cores} cores, beside a one-core job; "
          f"mean of {args.rounds} runs each")
    print(f"{'run':<22}{'wall s':>9}{'CPU s':>9}{'system':>9}")
    for name, runs in results.items():
        print(f"{name + ', busy machine':<22}{statistics.mean(r['wall'] for r in runs):>9.1f}"
              f"{statistics.mean(r['cpu'] for r in runs):>9.1f}{statistics.mean(r['system'] for r in runs):>9.0%}")
    print(f"{'default, idle machine':<22}{idle['wall']:>9.1f}{idle['cpu']:>9.1f}{idle['system']:>9.0%}")
    default, every = results["default"], results[f"threads={cores}"]
    for key, what in (("wall", "wall time"), ("cpu", "CPU time")):
        ratio = statistics.mean(d[key] for d in default) / statistics.mean(e[key] for e in every)
        print(f"default / threads={cores}, {what}: {ratio:.2f}")


if __name__ == "__main__":
    main()
