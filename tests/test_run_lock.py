"""One writer per run folder and per study (support/run_lock.py): a second process meets the lock
and stops in one line naming the holder; a killed holder leaves no dead end."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mtsmart.cli import main
from mtsmart.support.run_lock import LOCK_FILE, FolderInUseError, FolderLock

HOLD = """
import sys, time
from pathlib import Path
from mtsmart.support.run_lock import FolderLock
lock = FolderLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def hold(folder: Path) -> subprocess.Popen:
    """Another process holding the folder's lock (as a training run does for its whole length)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_process_is_refused_naming_the_holder(tmp_path):
    holder = hold(tmp_path / "run")
    try:
        with pytest.raises(FolderInUseError, match=rf"output_dir {tmp_path / 'run'} is in use by process {holder.pid} on "):
            FolderLock(tmp_path / "run").acquire()
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_leaves_no_dead_end(tmp_path):
    holder = hold(tmp_path / "run")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / "run" / LOCK_FILE).is_file()  # the file stays; the kernel dropped the lock
    with FolderLock(tmp_path / "run"):
        pass


def test_training_into_a_folder_another_process_writes_stops_in_one_line(tmp_path, data_root, capsys):
    out = tmp_path / "run"
    holder = hold(out)
    try:
        code = main(["train", "model.name_or_path=tiny", "model.tiny_hidden_size=32", f"data.root={data_root}",
                     "tasks=[rte]", "train.max_steps=2", "eval.max_examples=8", f"output_dir={out}"])
    finally:
        holder.kill()
        holder.wait()
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"is in use by process {holder.pid}" in err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing of a run was written


def test_two_runs_started_together_into_one_folder_leave_one_run(tmp_path, data_root):
    """Both used to exit 0, the folder ending with one run's config and the other's results."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "mtsmart", "train", "model.name_or_path=tiny", "model.tiny_hidden_size=32",
               f"data.root={data_root}", "tasks=[rte]", "train.max_steps=20", "eval.max_examples=8", f"output_dir={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(command + ["train.seed=1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    second = subprocess.Popen(command + ["train.seed=2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    codes = sorted([first.wait(timeout=300), second.wait(timeout=300)])
    errors = first.stderr.read() + second.stderr.read()
    assert codes == [0, 2], errors
    assert "is in use by process" in errors or "already holds a run" in errors


@pytest.mark.slow
def test_a_study_has_one_runner_and_its_children_stop_with_it(tmp_path, data_root):
    """A second runner of the same settings stops in one line; kill -9 of the runner stops its
    training children (they used to keep running and be handed out again by the next runner)."""
    import yaml

    from mtsmart.recipes.study.spec import Job, load_study

    data = {"name": "locked", "metric": "avg", "baseline": "plain", "seeds": {"report": [1]},
            "base": {"model": {"name_or_path": "tiny", "tiny_hidden_size": 32}, "data": {"max_seq_len": 48},
                     "train": {"batch_size": 8, "max_steps": 100000, "save_every_steps": 50},
                     "eval": {"max_examples": 8}, "adversarial": {"method": "none"}, "bregman": {"mu": 0.0}},
            "settings": {"rte": {"tasks": ["rte"]}}, "variants": {"plain": {}}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    env = {**os.environ, "MTSMART_DATA": str(data_root), "OMP_NUM_THREADS": "1"}
    runner = subprocess.Popen([sys.executable, "-m", "mtsmart", "study", str(path)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = Job("rte", "plain", "default", 1, "", {}).folder(load_study(path).runs_dir)
    deadline = time.monotonic() + 300
    while not (folder / "run_info.json").is_file():
        assert time.monotonic() < deadline and runner.poll() is None
        time.sleep(0.5)
    second = subprocess.run([sys.executable, "-m", "mtsmart", "study", str(path)], env=env, capture_output=True,
                            text=True, timeout=120)
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
    assert f"is in use by process {runner.pid}" in second.stderr
    children = subprocess.run(["pgrep", "-P", str(runner.pid)], capture_output=True, text=True).stdout.split()
    assert children, "the runner has a training child"
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    deadline = time.monotonic() + 60
    while any(os.path.exists(f"/proc/{pid}") and "Z" not in open(f"/proc/{pid}/stat").read().split()[2] for pid in children):
        assert time.monotonic() < deadline, f"training child {children} outlived its runner"
        time.sleep(0.5)
