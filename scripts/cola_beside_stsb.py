"""CoLA trained beside STS-B against CoLA alone, for the same number of CoLA steps (issue 28):

    python scripts/cola_beside_stsb.py --out runs/cola_stsb --seeds 1 2 3 --cola-steps 1000 --precision bf16

Runs (skipping any already finished), two at a time with one thread each, the packaged MiniLM
with the plain recipe of docs/results.md "CoLA in the multi-task mix": CoLA alone for
`--cola-steps` steps, and CoLA + STS-B for as many steps as give CoLA that many in expectation
under proportional sampling (CoLA has 8,551 training sentences, STS-B 5,749 pairs), once per
balancing arm. Prints CoLA's MCC per arm and seed, mean ± std, and the seed-paired difference to
CoLA alone with its 95% t-interval.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from scipy import stats

COLA_SIZE, STSB_SIZE = 8551, 5749  # training examples: proportional sampling draws CoLA with p = 8551 / 14300
COMMON = ["model.name_or_path=minilm", "adversarial.method=none", "bregman.mu=0",
          "train.lr=1e-4", "train.batch_size=16", "data.max_seq_len=128", "data.group_by_length=true",
          "train.log_every_steps=50", "eval.every_steps=0"]
ARMS = {  # each arm's options besides the step count
    "cola_alone": ["tasks=[cola]"],
    "with_stsb_raw": ["tasks=[cola,stsb]", "mix.regression_targets=raw"],
    "with_stsb_score_range": ["tasks=[cola,stsb]", "mix.regression_targets=score_range"],
    "with_stsb_score_range_half": ["tasks=[cola,stsb]", "mix.regression_targets=score_range", "mix.loss_weights={stsb: 0.5}"],
}


def steps(arm: str, cola_steps: int) -> int:
    """Optimizer steps that give CoLA `cola_steps` of them in expectation."""
    if arm == "cola_alone":
        return cola_steps
    return round(cola_steps * (COLA_SIZE + STSB_SIZE) / COLA_SIZE)


def finished(folder: Path) -> bool:
    return (folder / "results.json").is_file()


def command(folder: Path, arm: str, seed: int, cola_steps: int, precision: str) -> list[str]:
    return [sys.executable, "-m", "mtsmart", "train", *COMMON, *ARMS[arm], f"train.max_steps={steps(arm, cola_steps)}",
            f"train.precision={precision}", f"train.seed={seed}", f"output_dir={folder}"]


def run_all(out: Path, arms: list[str], seeds: list[int], workers: int, cola_steps: int, precision: str) -> None:
    pending = [(arm, seed) for seed in seeds for arm in arms if not finished(out / arm / f"seed_{seed}")]
    running: list[subprocess.Popen] = []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    while pending or running:
        running = [p for p in running if p.poll() is None]
        while pending and len(running) < workers:
            arm, seed = pending.pop(0)
            folder = out / arm / f"seed_{seed}"
            folder.parent.mkdir(parents=True, exist_ok=True)
            resume = ["train.resume=auto"] if folder.exists() else []
            log = open(out / arm / f"seed_{seed}.log", "a")
            running.append(subprocess.Popen(command(folder, arm, seed, cola_steps, precision) + resume, stdout=log, stderr=subprocess.STDOUT, env=env))
            print(f"started {arm} seed {seed}", flush=True)
        time.sleep(5)


def mcc(out: Path, arm: str, seed: int) -> float:
    return 100 * json.loads((out / arm / f"seed_{seed}" / "results.json").read_text())["final"]["cola/mcc"]


def interval(differences: list[float]) -> str:
    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return f"{mean:+.2f}"
    half = stats.t.ppf(0.975, len(differences) - 1) * statistics.stdev(differences) / len(differences) ** 0.5
    return f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}]"


def report(out: Path, arms: list[str], seeds: list[int]) -> None:
    print("| arm | CoLA MCC per seed | mean ± std | − CoLA alone, seed-paired [95% CI] |\n|---|---|---|---|")
    alone = [mcc(out, "cola_alone", s) for s in seeds]
    for arm in arms:
        scores = [mcc(out, arm, s) for s in seeds]
        spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
        diff = "" if arm == "cola_alone" else interval([a - b for a, b in zip(scores, alone)])
        print(f"| {arm} | {', '.join(f'{v:.2f}' for v in scores)} | {statistics.fmean(scores):.2f} ± {spread:.2f} | {diff} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/cola_stsb"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cola-steps", type=int, default=1000, help="CoLA's optimizer steps in every arm")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    arms = ["cola_alone", *[a for a in args.arms if a != "cola_alone"]]
    if not args.report_only:
        run_all(args.out, arms, args.seeds, args.workers, args.cola_steps, args.precision)
    report(args.out, arms, args.seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
