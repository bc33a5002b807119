"""Task sampler: proportions, determinism, resumable position; LR schedule."""
import pytest
import torch

from mtsmart.components.sampler import TaskSampler, task_probabilities
from mtsmart.options.mix import MixConfig
from mtsmart.arithmetic.schedule import linear_warmup_decay


def test_probabilities_by_hand():
    assert task_probabilities([100, 300], MixConfig(sampling="proportional")) == pytest.approx([0.25, 0.75])
    assert task_probabilities([100, 400], MixConfig(sampling="temperature", temperature=2.0)) == pytest.approx([10 / 30, 20 / 30])
    assert task_probabilities([1, 1000], MixConfig(sampling="uniform")) == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match="sampling"):
        MixConfig(sampling="bogus")
    with pytest.raises(ValueError, match="training examples"):
        task_probabilities([0, 2], MixConfig(sampling="uniform"))


def test_empirical_proportions():
    sampler = TaskSampler(["a", "b", "c"], [100, 300, 600], MixConfig(sampling="proportional"), total_steps=100, seed=0)
    draws = [sampler.next_task(step) for step in range(20000)]
    for task, p in zip("abc", [0.1, 0.3, 0.6]):
        assert draws.count(task) / len(draws) == pytest.approx(p, abs=0.015)


def test_deterministic_and_independent_of_global_rng():
    first = TaskSampler(["a", "b"], [1, 1], MixConfig(sampling="uniform"), total_steps=100, seed=3)
    torch.manual_seed(123)
    torch.rand(10)
    second = TaskSampler(["a", "b"], [1, 1], MixConfig(sampling="uniform"), total_steps=100, seed=3)
    assert [first.next_task(step) for step in range(50)] == [second.next_task(step) for step in range(50)]


def test_resume_continues_the_same_sequence():
    straight = TaskSampler(["a", "b", "c"], [5, 3, 2], MixConfig(sampling="proportional"), total_steps=100, seed=7)
    expected = [straight.next_task(step) for step in range(40)]
    part = TaskSampler(["a", "b", "c"], [5, 3, 2], MixConfig(sampling="proportional"), total_steps=100, seed=7)
    head = [part.next_task(step) for step in range(17)]
    fresh = TaskSampler(["a", "b", "c"], [5, 3, 2], MixConfig(sampling="proportional"), total_steps=100, seed=999)
    fresh.load_state_dict(part.state_dict())
    tail = [fresh.next_task(step) for step in range(23)]
    assert head + tail == expected
    assert len(set(expected)) > 1


def test_state_of_other_tasks_refused():
    sampler = TaskSampler(["a", "b"], [1, 1], MixConfig(sampling="uniform"), total_steps=100, seed=0)
    other = TaskSampler(["a", "c"], [1, 1], MixConfig(sampling="uniform"), total_steps=100, seed=0)
    with pytest.raises(ValueError, match="tasks"):
        sampler.load_state_dict(other.state_dict())


def test_linear_warmup_decay_by_hand():
    total, warm = 10, 4
    values = [linear_warmup_decay(s, total, warm) for s in range(total + 1)]
    assert values[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert values[4:] == pytest.approx([1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6, 0.0])
    assert linear_warmup_decay(0, 10, 0) == 1.0
