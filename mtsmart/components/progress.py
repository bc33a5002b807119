"""What a user sees while and after training, wherever stdout goes.

On a terminal tqdm draws its bar. Redirected to a file (nohup, a cluster job, CI) tqdm is off,
so `progress_line` gives a plain line every `train.log_every_steps`, as the Hugging Face Trainer
prints; `final_summary` closes every run with the dev scores, the run directory and the command
that opens its TensorBoard curves.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Optional

from mtsmart.support.tables import table


def duration(seconds: float) -> str:
    """12s, 3m04s, 1h02m."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_line(step: int, total: int, loss: Optional[float], examples_per_s: float,
                  elapsed: float, steps_this_process: int) -> str:
    """`step 120/320 (38%) | loss 0.5121 | 105.3 examples/s | elapsed 1m05s | eta 1m48s`.

    The ETA extrapolates this process's own pace (a resumed run counts only the steps it made).
    """
    eta = elapsed / steps_this_process * (total - step) if steps_this_process > 0 else 0.0
    loss_text = f"{loss:.4f}" if loss is not None else "n/a"
    return (f"step {step}/{total} ({100 * step // max(total, 1)}%) | loss {loss_text} | "
            f"{examples_per_s:.1f} examples/s | elapsed {duration(elapsed)} | eta {duration(eta)}")


def evaluation_line(step: int, total: int, results: dict[str, float], best_avg: float, best_step: int) -> str:
    """`eval step 400/800 | rte/accuracy 59.57 | stsb/pearson 85.94 | avg 72.76 | best avg 72.76 at step 400`:
    every evaluation's dev scores (× 100, as the final table shows them) in the log as well as in
    TensorBoard, so a log piped to a file shows them as they come."""
    scores = " | ".join(f"{key} {100 * value:.2f}" for key, value in results.items() if key != "avg")
    return (f"eval step {step}/{total} | {scores} | avg {100 * results['avg']:.2f} | "
            f"best avg {100 * best_avg:.2f} at step {best_step}")


def task_bests_summary(best_per_task: dict[str, dict]) -> str:
    """Each task's best step and score by its own dev metrics (`--checkpoint best:<task>` loads it)."""
    rows = [["task", "metric", "best", "at step"]]
    for task, best in best_per_task.items():
        for key, value in best.items():
            if key != "step":
                rows.append([task, key.split("/", 1)[1], f"{100 * value:.2f}", str(best["step"])])
    return "each task's best (evaluate/predict/export --checkpoint best:<task>):\n" + table(rows)


def final_summary(final: dict[str, float], run_dir: Path) -> str:
    """The dev scores per task and metric, the run directory and its TensorBoard command."""
    rows = [["task", "metric", "dev"]]
    for key, value in final.items():
        if key != "avg":
            task, metric = key.split("/", 1)
            rows.append([task, metric, f"{100 * value:.2f}"])
    rows.append(["avg", "(GLUE-style mean)", f"{100 * final['avg']:.2f}"])
    return "\n".join([table(rows), f"run directory: {run_dir}", f"curves: {tensorboard_program()} --logdir {run_dir / 'tb'}"])


def tensorboard_program() -> str:
    """`tensorboard` when it is on PATH; else the one beside this Python (scripts/train_mt.sh runs
    .venv's Python without activating it, so a bare `tensorboard` would not be found)."""
    if shutil.which("tensorboard"):
        return "tensorboard"
    beside = Path(sys.executable).parent / "tensorboard"
    return str(beside) if beside.is_file() else "tensorboard"
