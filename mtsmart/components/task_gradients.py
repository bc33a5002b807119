"""Negative-transfer diagnostics (`train.task_gradients_every`; docs/tensorboard.md): per task, the
norm of its gradient on the shared encoder and its cosine with every task's recent gradient.

At a diagnosed step of task t, with g_t its (accumulated, unscaled, not yet clipped) gradient on
the encoder's parameters, flattened:

    task_grad/<t>/norm      = ‖g_t‖₂
    task_grad/<t>/cos_<u>   = cos(g_t, m_u)   for every task u diagnosed before (u = t: how steady t is)
    m_t ← g_t at t's first diagnosed step, then  β · m_t + (1 − β) · g_t   (β = `DECAY`)

A cosine below zero means a step of t undoes what u's recent steps did: the signature of
negative transfer. The running means are part of the checkpoint, so a resumed run logs what the
straight one does. Cost: a copy of the encoder's gradient and one dot product per task, at the
diagnosed steps only (docs/performance.md).
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import nn

DECAY = 0.8  # β of the running mean of a task's diagnosed gradients


def flat_gradient(parameters: Sequence[nn.Parameter], out: torch.Tensor) -> torch.Tensor:
    """The parameters' gradients as one float32 vector written into `out` (zeros where a
    parameter got none); one buffer for the run, so a diagnosed step allocates nothing."""
    offset = 0
    for p in parameters:
        part = out[offset:offset + p.numel()]
        if p.grad is None:
            part.zero_()
        else:
            part.copy_(p.grad.detach().reshape(-1))
        offset += p.numel()
    return out


def cosine(a: torch.Tensor, a_norm: float, b: torch.Tensor) -> float:
    denominator = a_norm * float(b.norm())
    return float(a @ b) / denominator if denominator > 0 else 0.0


class TaskGradientMonitor:
    def __init__(self, tasks: Iterable[str], every: int, encoder: nn.Module):
        self.tasks, self.every = list(tasks), every
        self.parameters = [p for p in encoder.parameters() if p.requires_grad]
        self.means: dict[str, torch.Tensor] = {}
        device = self.parameters[0].device if self.parameters else torch.device("cpu")
        self.buffer = torch.empty(sum(p.numel() for p in self.parameters), dtype=torch.float32, device=device)

    def due(self, step: int) -> bool:
        """Whether optimizer step `step` (counted from 1) is diagnosed."""
        return self.every > 0 and step % self.every == 0

    def observe(self, task: str) -> dict[str, float]:
        """The scalars of this step of `task`, from the gradients now in the encoder; updates m_task."""
        gradient = flat_gradient(self.parameters, self.buffer)
        if not bool(torch.isfinite(gradient).all()):
            return {}  # a step the loop skips: nothing to learn from, and a mean it must not spoil
        norm = float(gradient.norm())
        scalars = {f"task_grad/{task}/norm": norm}
        for other, mean in self.means.items():
            scalars[f"task_grad/{task}/cos_{other}"] = cosine(gradient, norm, mean)
        previous = self.means.get(task)
        self.means[task] = gradient.clone() if previous is None else previous.mul_(DECAY).add_(gradient, alpha=1 - DECAY)
        return scalars

    def state_dict(self) -> dict[str, Any]:
        return {"means": {task: mean.cpu() for task, mean in self.means.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.parameters[0].device if self.parameters else torch.device("cpu")
        self.means = {task: mean.to(device) for task, mean in state["means"].items()}
