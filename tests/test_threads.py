"""train.threads: the intra-op threads of a run, and the default's formula (support/threads.py)."""
from __future__ import annotations

import json
import os

import pytest

from mtsmart.options.config import ConfigError, load_config
from mtsmart.support.threads import choose_threads


@pytest.mark.parametrize("configured,env,cores,load,expected", [
    (3, {"OMP_NUM_THREADS": "1"}, 2, 0.0, (3, "train.threads")),      # the option wins
    (0, {"OMP_NUM_THREADS": "2"}, 8, 5.0, (2, "OMP_NUM_THREADS")),    # then the environment (torchrun, study)
    (0, {}, 2, 0.1, (2, None)),                                        # idle: every core
    (0, {}, 2, 1.2, (1, None)),                                        # one busy core: the other
    (0, {}, 2, 2.6, (1, None)),                                        # all busy: still one
    (0, {}, 16, 5.5, (10, None)),                                      # 16 − round(5.5) = 10 (round half to even)
    (0, {"OMP_NUM_THREADS": "x"}, 4, 1.0, (3, None)),                  # a malformed variable is ignored
])
def test_the_default_takes_the_cores_not_already_busy(configured, env, cores, load, expected):
    threads, why = choose_threads(configured, env=env, cores=cores, load=load)
    assert threads == expected[0]
    assert why == expected[1] if expected[1] else why.startswith(f"{cores} cores, {load:.1f} busy at start")


def test_a_negative_thread_count_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="train.threads"):
        load_config(overrides=["train.threads=-1"])


def test_a_run_uses_and_records_its_threads(train_tiny, tmp_path, capsys):
    import torch

    before = torch.get_num_threads()
    try:
        out = train_tiny(tmp_path / "run", "tasks=[rte]", "train.max_steps=1", "eval.max_examples=8", "train.threads=2")
    finally:
        torch.set_num_threads(before)
    assert json.loads((out / "run_info.json").read_text())["intra_op_threads"] == 2
    assert "threads: 2 (train.threads)" in capsys.readouterr().out


def test_busy_cores_sees_a_spinning_process():
    """A process spinning on one core reads as about one busy core more than without it."""
    import subprocess
    import sys

    from mtsmart.support.threads import busy_cores

    before = busy_cores(0.5)
    if before > (os.cpu_count() or 1) - 0.8:
        pytest.skip(f"no idle core to see a spinner on ({before:.1f} of {os.cpu_count()} busy)")
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time
        time.sleep(0.3)
        during = busy_cores(0.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert during > before + 0.5, (before, during)
