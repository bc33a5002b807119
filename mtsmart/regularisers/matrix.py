"""`scope: matrix`: the seed articles' FGSM / FGM / PGD on the whole word-embedding matrix W.

Their procedure, per batch (one norm for all of W, not per example):

    back-propagate the clean loss;  g = ∇_W
    FGM/FGSM: W ← W₀ + ε · g/‖g‖ (ε · sign(g));  back-propagate L(W);  restore W₀
    PGD:      for t = 1 … K:  r ← Π_{‖r‖≤ε}(r + η · g/‖g‖),  W ← W₀ + r,  forward L(W);
                  t < K: g = ∇_W L(W) for the next step;  t = K: back-propagate L(W)
              restore W₀
    θ's gradient = ∇_θ [clean loss] + weight · ∇_θ L(W₀ + r_last)

Two deliberate differences in mechanics, with identical gradients:
- g of the clean step is read by a hook on W during that backward, not from W.grad, which under
  gradient accumulation would also hold earlier micro-batches' gradients.
- PGD's intermediate steps take ∇_W only (torch.autograd.grad) instead of a full backward that
  the articles then undo (back up every parameter's gradient, zero, restore): this forms no
  parameter gradients and needs no copy of them.
W is restored bitwise from a copy in a `finally:` block, so an error mid-attack cannot leave it
perturbed.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from mtsmart.regularisers.base import (
    AdversarialContext, AdversarialMethod, AdversarialResult, Terms, finite_or_zero, require_labels,
)
from mtsmart.model.multitask import task_output, unwrap
from mtsmart.arithmetic.perturbation import project, steepest_ascent, unit_norm

# The whole matrix is one perturbation unit: view W (V, H) as one "example" (1, V, H) of V rows.
_UNIT = "example"


def matrix_direction(grad: Tensor, norm: str) -> Tensor:
    """g/‖g‖ under `norm` with one norm for the whole matrix (sign(g) for inf). (V, H) → (V, H)."""
    ones = torch.ones((), dtype=grad.dtype, device=grad.device)
    return steepest_ascent(grad.unsqueeze(0), norm, _UNIT, ones).squeeze(0)


def matrix_project(r: Tensor, radius: float, norm: str) -> Tensor:
    """Π_{‖r‖≤ε} with one norm for the whole matrix. (V, H) → (V, H)."""
    ones = torch.ones((), dtype=r.dtype, device=r.device)
    return project(r.unsqueeze(0), radius, norm, _UNIT, ones).squeeze(0)


def rank_mean(grad: Tensor) -> Tensor:
    """Under DDP each rank sees the gradient of its own shard; the attack direction is that of the
    whole global batch, as in one process, so average it over ranks."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(grad)
        grad /= torch.distributed.get_world_size()
    return grad


def backward_capturing(backward: Callable[[Terms], None], terms: Terms, param: nn.Parameter) -> Tensor:
    """Back-propagates `terms` with the objective's `backward`; returns this backward's gradient of `param`."""
    captured: list[Tensor] = []
    handle = param.register_hook(lambda grad: captured.append(grad.detach().clone()))
    try:
        backward(terms)
    finally:
        handle.remove()
    if not captured:
        raise ValueError("scope=matrix: the loss does not depend on the word-embedding matrix")
    return captured[0]


class MatrixAttack(AdversarialMethod):
    """K steps of size `step_size` on W; `radius` None (FGM/FGSM) means no projection."""

    extra_backward = True  # the clean loss is back-propagated first, to read ∇_W
    scalars = ("loss", "delta_norm", "skipped")

    def __init__(self, step_size: float, steps: int, norm: str, radius: Optional[float], weight: float, name: str):
        self.step_size, self.steps, self.norm, self.radius, self.weight = step_size, steps, norm, radius, weight
        self.name = name

    def __call__(self, ctx: AdversarialContext) -> AdversarialResult:
        labels = require_labels(ctx, self.name)
        if ctx.task_loss is None:
            raise ValueError(f"adversarial.method={self.name} with scope=matrix needs the clean task loss")
        weight = unwrap(ctx.model).encoder.get_input_embeddings().weight
        if not weight.requires_grad:
            raise ValueError("scope=matrix needs a trainable word-embedding matrix")
        grad = rank_mean(backward_capturing(ctx.backward, ctx.clean, weight))
        backup = weight.detach().clone()  # W₀
        r = torch.zeros_like(backup)
        skipped = 0
        try:
            for step in range(self.steps):
                grad, bad = finite_or_zero(grad)
                skipped += bad
                r = r + self.step_size * matrix_direction(grad, self.norm)
                if self.radius is not None:
                    r = matrix_project(r, self.radius, self.norm)
                with torch.no_grad():
                    weight.copy_(backup + r)
                adv_loss = ctx.task_type.loss(task_output(ctx.model, ctx.batch), labels)
                if step < self.steps - 1:
                    (grad,) = torch.autograd.grad(adv_loss, weight)
                    grad = rank_mean(grad)
                else:
                    ctx.backward(Terms(regulariser=self.weight * adv_loss))
        finally:
            with torch.no_grad():
                weight.copy_(backup)
        return AdversarialResult(
            terms=Terms(),  # clean and adversarial terms are both back-propagated already
            scalars={"loss": float(adv_loss.detach()), "delta_norm": float(unit_norm(r.unsqueeze(0), self.norm, _UNIT)),
                     "skipped": float(skipped)},
        )
