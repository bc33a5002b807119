"""Negative-transfer diagnostics (`train.task_gradients_every`) against the formulas by hand, and
exact under resume."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from mtsmart.components.task_gradients import DECAY, TaskGradientMonitor


def encoder_with_gradient(values: list[float]) -> nn.Module:
    encoder = nn.Linear(2, 1, bias=True)  # 3 parameters: weight (1, 2), bias (1,)
    encoder.weight.grad = torch.tensor([values[:2]])
    encoder.bias.grad = torch.tensor(values[2:])
    return encoder


def set_gradient(encoder: nn.Module, values: list[float]) -> None:
    encoder.weight.grad = torch.tensor([values[:2]])
    encoder.bias.grad = torch.tensor(values[2:])


def test_norms_cosines_and_running_means_by_hand():
    encoder = encoder_with_gradient([3.0, 4.0, 0.0])
    monitor = TaskGradientMonitor(["a", "b"], every=2, encoder=encoder)
    assert [monitor.due(s) for s in (1, 2, 3, 4)] == [False, True, False, True]
    assert monitor.observe("a") == {"task_grad/a/norm": 5.0}  # nothing to compare with yet
    set_gradient(encoder, [0.0, 0.0, 2.0])
    assert monitor.observe("b") == pytest.approx({"task_grad/b/norm": 2.0, "task_grad/b/cos_a": 0.0})
    set_gradient(encoder, [-3.0, -4.0, 0.0])
    scalars = monitor.observe("a")
    assert scalars == pytest.approx({"task_grad/a/norm": 5.0, "task_grad/a/cos_a": -1.0, "task_grad/a/cos_b": 0.0})
    expected = DECAY * torch.tensor([3.0, 4.0, 0.0]) + (1 - DECAY) * torch.tensor([-3.0, -4.0, 0.0])
    assert torch.allclose(monitor.means["a"], expected)


def test_a_parameter_without_gradient_counts_as_zero_and_a_non_finite_step_is_left_out():
    encoder = encoder_with_gradient([1.0, 0.0, 0.0])
    encoder.bias.grad = None
    monitor = TaskGradientMonitor(["a"], every=1, encoder=encoder)
    assert monitor.observe("a") == {"task_grad/a/norm": 1.0}
    set_gradient(encoder, [math.nan, 0.0, 0.0])
    assert monitor.observe("a") == {}
    assert torch.equal(monitor.means["a"], torch.tensor([1.0, 0.0, 0.0]))


def test_the_running_means_round_trip_through_the_state():
    encoder = encoder_with_gradient([1.0, 2.0, 3.0])
    monitor = TaskGradientMonitor(["a"], every=1, encoder=encoder)
    monitor.observe("a")
    other = TaskGradientMonitor(["a"], every=1, encoder=encoder)
    other.load_state_dict(monitor.state_dict())
    assert torch.equal(other.means["a"], monitor.means["a"])


def logged(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[str, dict[int, float]] = {}
    for events in sorted((run / "tb").glob("events.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            if tag.startswith("task_grad/"):
                values.setdefault(tag, {}).update({e.step: e.value for e in accumulator.Scalars(tag)})
    return {tag: sorted(steps.items()) for tag, steps in values.items()}


def test_a_resumed_run_logs_what_the_straight_one_does(tmp_path, train_tiny):
    common = ["tasks=[rte,stsb]", "train.max_steps=8", "train.task_gradients_every=1", "train.save_every_steps=1",
              "eval.max_examples=16"]
    straight = train_tiny(tmp_path / "straight", *common)
    stopped = train_tiny(tmp_path / "resumed", *common, "train.stop_after_steps=4")
    resumed = train_tiny(stopped, *common, "train.resume=auto")
    expected = logged(straight)
    assert {"task_grad/rte/norm", "task_grad/stsb/norm", "task_grad/rte/cos_stsb", "task_grad/stsb/cos_rte"} <= set(expected)
    assert sum(len(v) for k, v in expected.items() if k.endswith("/norm")) == 8  # every step diagnosed
    assert logged(resumed) == expected


def test_the_cost_benchmark_runs_in_quick_mode():
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_task_gradients.py"
    done = subprocess.run([sys.executable, str(script), "--quick", "--rounds", "2"], capture_output=True, text=True, check=True)
    assert "train.task_gradients_every=10:" in done.stdout and "% of training time" in done.stdout
