"""Which task each optimizer step trains on (MT-DNN: one task per mini-batch), by `mix.sampling`
(docs/method.md "Balancing tasks").

The sampler owns a seeded torch.Generator, never the global RNG, so its draws do not depend on
what else consumed random numbers; its position is the generator state, saved in checkpoints.
Annealed sampling's probabilities are a function of the step, so a resumed run draws as the
straight one does. Every rank builds the same sampler with the same seed, so all ranks draw the
same task.
"""
from __future__ import annotations

import base64
from typing import Sequence

import torch

from mtsmart.options.mix import MixConfig


def task_probabilities(sizes: Sequence[int], mix: MixConfig, progress: float = 0.0) -> list[float]:
    """p_t for tasks of n_t training examples, `progress` ∈ [0, 1] the fraction of training done:

        proportional  n_t                     temperature  n_t^(1/T)
        uniform       1                       capped       min(n_t, cap)^(1/T)
        annealed      n_t^α,  α = 1 − (1 − anneal_to) · progress
    """
    if not sizes or any(n <= 0 for n in sizes):
        raise ValueError(f"every task needs training examples, got sizes {list(sizes)}")
    exponent = {"proportional": 1.0, "temperature": 1.0 / mix.temperature, "uniform": 0.0,
                "capped": 1.0 / mix.temperature, "annealed": 1.0 - (1.0 - mix.anneal_to) * progress}[mix.sampling]
    counts = [min(n, mix.cap) if mix.sampling == "capped" else n for n in sizes]
    weights = [float(n) if exponent == 1.0 else float(n) ** exponent for n in counts]
    total = sum(weights)
    return [w / total for w in weights]


class TaskSampler:
    def __init__(self, tasks: Sequence[str], sizes: Sequence[int], mix: MixConfig, total_steps: int, seed: int):
        self.tasks, self.sizes, self.mix = list(tasks), list(sizes), mix
        self.total_steps = total_steps
        self.fixed = None if mix.sampling == "annealed" else self._probabilities(0.0)
        self.generator = torch.Generator().manual_seed(seed)
        self.draws = 0

    def _probabilities(self, progress: float) -> torch.Tensor:
        return torch.tensor(task_probabilities(self.sizes, self.mix, progress), dtype=torch.float64)

    def probabilities(self, step: int) -> torch.Tensor:
        """p_t at optimizer step `step` (0 = the first)."""
        if self.fixed is not None:
            return self.fixed
        return self._probabilities(min(1.0, step / max(1, self.total_steps - 1)))

    def next_task(self, step: int) -> str:
        index = torch.multinomial(self.probabilities(step), 1, generator=self.generator).item()
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
