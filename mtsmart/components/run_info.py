"""What a run records about itself (run_info.json), and seeding."""
from __future__ import annotations

import platform
import random
import subprocess
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch

import mtsmart


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_info(cfg, command_line: Optional[list[str]]) -> dict:
    import transformers

    return {
        "mtsmart": mtsmart.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "command_line": command_line if command_line is not None else sys.argv,
        "seed": cfg.train.seed,
        "cuda": torch.cuda.is_available(),
        "intra_op_threads": torch.get_num_threads(),  # OMP_NUM_THREADS, e.g. as `mtsmart study --threads` sets it
    }
