"""train.keep_freed_memory: with it, memory a step frees is reused without page faults."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Allocate and touch 40 tensors of 8 MiB, free them, do it again, and print the minor page
# faults of the second round: the kernel's cost of memory that malloc handed back in between.
PROBE = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from mtsmart.support.allocator import keep_freed_memory
    assert keep_freed_memory()
def round_():
    tensors = [torch.ones(2 << 20) for _ in range(40)]  # 2 Mi floats = 8 MiB each
    del tensors
round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
round_()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults_of_second_round(mode: str) -> int:
    run = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return int(run.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_freed_memory_is_reused_without_page_faults():
    pages = 40 * (8 << 20) // 4096  # 81920 pages of 4 KiB in a round
    default = page_faults_of_second_round("default")
    kept = page_faults_of_second_round("keep")
    assert default > pages * 3 // 4  # glibc's defaults give nearly all of it back to the kernel...
    # ...keep_freed_memory reuses it (measured 2 to 20 thousand faults here, not 0: the host's
    # memory reclaim, kdamond, takes idle pages of any process)
    assert kept < pages // 3


@pytest.mark.parametrize("setting,expected", [("true", sys.platform.startswith("linux")), ("false", False)])
def test_the_setting_is_recorded_in_run_info(tmp_path, train_tiny, setting, expected):
    out = train_tiny(tmp_path / "run", "tasks=[rte]", "train.max_steps=1", "eval.max_examples=8",
                     f"train.keep_freed_memory={setting}")
    assert json.loads((out / "run_info.json").read_text())["malloc_keeps_freed_memory"] is expected
