"""The real recipe end to end on a tiny model: outputs, TensorBoard, loss falls, exact resume."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import last_step_checkpoint

REPO = Path(__file__).resolve().parents[1]

# A tiny run over one task of each of two types, with SMART and Bregman on (the defaults).
TINY = [
    "model.name_or_path=tiny",
    "model.tiny_hidden_size=32",
    "tasks=[rte,stsb]",
    "data.max_seq_len=48",
    "train.batch_size=8",
    "train.lr=1e-3",
    "train.max_steps=8",
    "train.log_every_steps=2",
    "eval.max_examples=32",
    "eval.batch_size=32",
]


def run_mtsmart(args: list[str], data_root: Path, check: bool = True, **popen) -> subprocess.CompletedProcess:
    env = {**os.environ, "MTSMART_DATA": str(data_root)}
    return subprocess.run(
        [sys.executable, "-m", "mtsmart", "train", *args], cwd=REPO, env=env, capture_output=True, text=True,
        check=False, timeout=600, **popen,
    )


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def assert_same_state(a: Path, b: Path) -> None:
    weights_a, weights_b = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key
    tensors_a = torch.load(a / "tensors.pt", weights_only=True)
    tensors_b = torch.load(b / "tensors.pt", weights_only=True)
    assert_nested_equal(tensors_a["bregman"], tensors_b["bregman"], "bregman")
    state_a = json.loads((a / "state.json").read_text())
    state_b = json.loads((b / "state.json").read_text())
    for key in ("train_state", "sampler", "loaders"):
        assert state_a[key] == state_b[key], key


def assert_states_differ(a: Path, b: Path) -> None:
    """Checkpoints of different steps: the weights, the teacher and the loop's counters all moved
    (so that assert_same_state of two runs' checkpoints compares something that changes)."""
    weights_a, weights_b = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert any(not torch.equal(weights_a[key], weights_b[key]) for key in weights_a)
    teacher_a = torch.load(a / "tensors.pt", weights_only=True)["bregman"]["teacher"]
    teacher_b = torch.load(b / "tensors.pt", weights_only=True)["bregman"]["teacher"]
    assert any(not torch.equal(teacher_a[key], teacher_b[key]) for key in teacher_a)
    state_a = json.loads((a / "state.json").read_text())
    state_b = json.loads((b / "state.json").read_text())
    for key in ("train_state", "sampler", "loaders"):
        assert state_a[key] != state_b[key], key


def assert_nested_equal(x, y, where: str) -> None:
    if isinstance(x, torch.Tensor):
        assert torch.equal(x, y), where
    elif isinstance(x, dict):
        assert x.keys() == y.keys(), where
        for key in x:
            assert_nested_equal(x[key], y[key], f"{where}.{key}")
    elif isinstance(x, (list, tuple)):
        assert len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y)):
            assert_nested_equal(u, v, f"{where}[{i}]")
    else:
        assert x == y, where


def test_train_mt_script_smoke_config(tmp_path, data_root):
    """The documented command: scripts/train_mt.sh scripts/configs/smoke.yaml output_dir=..."""
    out = tmp_path / "smoke"
    env = {**os.environ, "MTSMART_DATA": str(data_root), "MTSMART_VENV": sys.prefix}
    started = time.perf_counter()
    log = tmp_path / "stdout.txt"  # stdout to a file, as under nohup or a cluster scheduler
    with open(log, "w", encoding="utf-8") as handle:
        result = subprocess.run(
            ["bash", "scripts/train_mt.sh", "scripts/configs/smoke.yaml", f"output_dir={out}"],
            cwd=REPO, env=env, stdout=handle, stderr=subprocess.PIPE, text=True, timeout=600,
        )
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-3000:]
    printed = log.read_text(encoding="utf-8")
    # A plain progress line every train.log_every_steps (5 in smoke.yaml), then the final table.
    for step in (5, 10, 30):
        assert re.search(rf"^step {step}/30 \(\d+%\) \| loss [0-9.]+ \| [0-9.]+ examples/s \| elapsed \S+ \| eta \S+$",
                         printed, re.MULTILINE), printed
    assert re.search(r"^rte\s+accuracy\s+[0-9.]+$", printed, re.MULTILINE), printed
    assert re.search(r"^stsb\s+spearman\s+[0-9.]+$", printed, re.MULTILINE), printed
    assert f"run directory: {out}" in printed and f"tensorboard --logdir {out / 'tb'}" in printed
    results = json.loads((out / "results.json").read_text())
    expected = {"rte/accuracy", "stsb/pearson", "stsb/spearman", "avg"}
    assert expected <= results["final"].keys() and expected <= results["best"].keys()
    tags = scalars(out)
    for tag in ("eval/rte/accuracy", "eval/stsb/pearson", "eval/stsb/spearman", "eval/avg", "train/loss",
                "train/rte/loss", "train/stsb/loss", "train/lr", "train/grad_norm", "train/examples_per_s",
                "adv/loss", "adv/rte/loss", "adv/delta_norm", "adv/embed_norm",
                "adv/skipped", "bregman/reg", "bregman/rte/reg", "bregman/beta",
                "bregman/teacher_distance"):
        assert tag in tags, f"{tag} missing from TensorBoard; have {sorted(tags)}"
    assert not [tag for tag in tags if tag.startswith(("train/smart/", "train/adv/", "train/bregman/"))]  # one name each
    # TensorBoard pages a section's cards in name order: train/loss comes before the per-task losses
    # of tasks after "l" and among the first cards of its section, not on its second page.
    assert sorted(tag for tag in tags if tag.startswith("train/")).index("train/loss") < 6
    # The events hold what results.json says (read back, not trusted from the writer).
    last_step, last_avg = tags["eval/avg"][-1]
    assert last_avg == pytest.approx(results["final"]["avg"], rel=1e-6)
    # Every evaluation (steps 15 and 30) is in the log too, × 100 as TensorBoard's values say.
    for step, avg in tags["eval/avg"]:
        [line] = [l for l in printed.splitlines() if l.startswith(f"eval step {step}/30 | ")]
        accuracy = dict(tags["eval/rte/accuracy"])[step]
        assert f"| rte/accuracy {100 * accuracy:.2f} |" in line and f"| avg {100 * avg:.2f} |" in line, line
        assert re.search(r"\| best avg [0-9.]+ at step (15|30)$", line), line
    assert [s for s, _ in tags["eval/avg"]] == [15, 30]
    for name in ("config.yaml", "run_info.json"):
        assert (out / name).is_file()
    info = json.loads((out / "run_info.json").read_text())
    assert {"torch", "transformers", "command_line", "seed", "git_commit"} <= info.keys()
    print(f"smoke run took {elapsed:.1f} s")


def test_loss_falls_on_a_fixed_task(tmp_path, data_root):
    """Plain fine-tuning of the tiny model on RTE: the training loss of the last steps is below the first."""
    out = tmp_path / "fall"
    ok(run_mtsmart(
        [*TINY, "tasks=[rte]", "adversarial.method=none", "bregman.mu=0", "train.max_steps=40",
         "train.lr=2e-3", "train.warmup_ratio=0", "data.train_fraction=0.025", f"output_dir={out}"],
        data_root,
    ))
    losses = [value for _, value in scalars(out)["train/loss"]]
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:2]) / 2, losses


def test_resume_in_a_fresh_process_is_exact(tmp_path, data_root):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    ok(run_mtsmart([*TINY, f"output_dir={straight}"], data_root))
    ok(run_mtsmart([*TINY, f"output_dir={resumed}", "train.stop_after_steps=4"], data_root))
    assert last_step_checkpoint(resumed).name == "step_00000004"
    ok(run_mtsmart([*TINY, f"output_dir={resumed}", "train.resume=auto"], data_root))
    assert_same_state(last_step_checkpoint(straight), last_step_checkpoint(resumed))
    assert_states_differ(resumed / "checkpoints" / "step_00000004", last_step_checkpoint(resumed))  # step 8
    assert json.loads((straight / "results.json").read_text()) == json.loads((resumed / "results.json").read_text())


def test_resume_after_kill_9(tmp_path, data_root):
    """Killed after its step-4 checkpoint while a second process tries to start in the folder: the
    second is refused and changes nothing; the resumed run equals the straight one byte for byte."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    args = [*TINY, "train.max_steps=12", "train.save_every_steps=2"]
    ok(run_mtsmart([*args, f"output_dir={straight}"], data_root))
    env = {**os.environ, "MTSMART_DATA": str(data_root)}
    process = subprocess.Popen(
        [sys.executable, "-m", "mtsmart", "train", *args, f"output_dir={killed}"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step_00000004").exists() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGSTOP)  # held where it is (and its lock with it) while the second one tries
    files = sorted((path.relative_to(killed), path.stat().st_mtime_ns) for path in killed.rglob("*"))
    second = run_mtsmart([*args, f"output_dir={killed}", "train.resume=auto"], data_root)
    assert second.returncode == 2 and "is in use by process" in second.stderr
    assert sorted((path.relative_to(killed), path.stat().st_mtime_ns) for path in killed.rglob("*")) == files
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "results.json").exists(), "the run finished before it could be killed"
    ok(run_mtsmart([*args, f"output_dir={killed}", "train.resume=auto"], data_root))
    assert_same_state(last_step_checkpoint(straight), last_step_checkpoint(killed))
    assert json.loads((straight / "results.json").read_text()) == json.loads((killed / "results.json").read_text())


def test_resume_with_another_config_is_refused(tmp_path, data_root):
    out = tmp_path / "run"
    ok(run_mtsmart([*TINY, f"output_dir={out}", "train.stop_after_steps=2"], data_root))
    result = run_mtsmart([*TINY, f"output_dir={out}", "train.resume=auto", "train.lr=5e-4"], data_root)
    assert result.returncode != 0
    assert "train.lr" in result.stderr


def test_bf16_autocast_and_grad_accumulation_run(tmp_path, data_root):
    out = tmp_path / "bf16"
    ok(run_mtsmart([*TINY, "train.precision=bf16", "train.grad_accum=2", "train.max_steps=3",
                    f"output_dir={out}"], data_root))
    results = json.loads((out / "results.json").read_text())
    assert all(value == value for value in results["final"].values())  # no NaN
    assert all(v == v for _, v in scalars(out)["train/loss"])
