"""Gradient penalty on the embeddings (Su 2020, "对抗训练浅谈"): L + ½ ε ‖∇_x L‖².

It is the first-order expansion of training on L(x + ε ∇_x L): no perturbation is formed, and
θ's gradient needs a second-order (double) backward through ∇_x L.

As in the article (and its bert4keras code), L is the batch-mean task loss and the squared norm
is over all of ∇_x L (N, T, H). Since ∇_{x_i} L = ∇_{x_i} ℓ_i / n, the penalty equals
½ ε · 1/n² Σ_i ‖∇_{x_i} ℓ_i‖²: for the same per-example gradients it shrinks as 1/n with the
batch size n, so an ε tuned at one batch size should be scaled with n at another.

The method makes the forward of L itself (`needs_clean_forward = False`): PyTorch's fused attention
kernels (flash / memory-efficient SDPA) have no double backward, so that forward runs with the
math SDPA backend. Cost: 1 forward, 1 input backward with create_graph, 1 double backward.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from mtsmart.regularisers.base import (
    AdversarialContext, AdversarialMethod, AdversarialResult, Terms, perturbed_loss, require_labels,
)


def gradient_penalty(grad: Tensor, epsilon: float, mask: Tensor) -> Tensor:
    """½ ε ‖g‖² over the real tokens of g = ∇_x L (N, T, H), in float32. → ()."""
    return 0.5 * epsilon * (grad * mask).float().pow(2).sum()


class GradientPenalty(AdversarialMethod):
    name = "gradient_penalty"
    needs_clean_forward = False  # it computes L in a double-differentiable forward of its own
    scalars = ("loss", "task_loss", "input_grad_norm")

    def __init__(self, epsilon: float, weight: float):
        self.epsilon, self.weight = epsilon, weight

    def __call__(self, ctx: AdversarialContext) -> AdversarialResult:
        labels = require_labels(ctx, self.name)
        if not ctx.embeds.requires_grad:
            raise ValueError("adversarial.method=gradient_penalty needs ∇_x: the word embeddings must require grad")
        with sdpa_kernel(SDPBackend.MATH):
            task_loss = perturbed_loss(ctx, ctx.embeds, labels)  # L(x, y), r = 0
        # create_graph: the penalty's own gradient w.r.t. θ goes through this gradient.
        (grad,) = torch.autograd.grad(task_loss, ctx.embeds, create_graph=True)
        penalty = gradient_penalty(grad, self.epsilon, ctx.mask)
        return AdversarialResult(
            terms=Terms(task_loss=task_loss, bregman=ctx.clean.bregman, regulariser=self.weight * penalty),
            scalars={"loss": float(penalty.detach()), "task_loss": float(task_loss.detach()),
                     "input_grad_norm": float(grad.detach().float().norm())},
        )
