"""Which task each optimizer step trains on (MT-DNN: one task per mini-batch).

The sampler owns a seeded torch.Generator, never the global RNG, so its draws do not depend on
what else consumed random numbers; its position is the generator state, saved in checkpoints.
Every rank builds the same sampler with the same seed, so all ranks draw the same task.
"""
from __future__ import annotations

import base64
from typing import Sequence

import torch

SAMPLING = ("proportional", "temperature", "uniform")


def task_probabilities(sizes: Sequence[int], sampling: str, temperature: float = 1.0) -> list[float]:
    """p_t ∝ n_t (proportional), n_t^(1/temperature) (temperature), or 1 (uniform)."""
    if not sizes or any(n <= 0 for n in sizes):
        raise ValueError(f"every task needs training examples, got sizes {list(sizes)}")
    if sampling == "proportional":
        weights = [float(n) for n in sizes]
    elif sampling == "temperature":
        weights = [float(n) ** (1.0 / temperature) for n in sizes]
    elif sampling == "uniform":
        weights = [1.0] * len(sizes)
    else:
        raise ValueError(f"data.sampling: {sampling!r} is not one of {SAMPLING}")
    total = sum(weights)
    return [w / total for w in weights]


class TaskSampler:
    def __init__(self, tasks: Sequence[str], sizes: Sequence[int], sampling: str, temperature: float, seed: int):
        self.tasks = list(tasks)
        self.probabilities = torch.tensor(task_probabilities(sizes, sampling, temperature), dtype=torch.float64)
        self.generator = torch.Generator().manual_seed(seed)
        self.draws = 0

    def next_task(self) -> str:
        index = torch.multinomial(self.probabilities, 1, generator=self.generator).item()
        self.draws += 1
        return self.tasks[index]

    def state_dict(self) -> dict:
        state = self.generator.get_state().numpy().tobytes()
        return {"tasks": self.tasks, "draws": self.draws, "generator": base64.b64encode(state).decode("ascii")}

    def load_state_dict(self, state: dict) -> None:
        if state["tasks"] != self.tasks:
            raise ValueError(f"sampler state is for tasks {state['tasks']}, this run has {self.tasks}")
        raw = torch.frombuffer(bytearray(base64.b64decode(state["generator"])), dtype=torch.uint8)
        self.generator.set_state(raw)
        self.draws = int(state["draws"])
