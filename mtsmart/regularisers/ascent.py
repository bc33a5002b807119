"""FGSM, FGM and PGD on each example's embeddings x (the papers' form; docs/adversarial.md).

    FGSM (Goodfellow 2015):  r = ε · sign(∇_x L(x, y))
    FGM  (Miyato 2017):      r = ε · g / ‖g‖,  g = ∇_x L(x, y)
    PGD  (Madry 2018):       r_{t+1} = Π_{‖r‖≤ε}(r_t + η · g_t / ‖g_t‖),  g_t = ∇_r L(x + r_t, y),  r_0 = 0
    objective:               L(x, y) + weight · L(x + r, y)   (r detached; PGD uses r_K)

`g / ‖g‖` is the steepest-ascent direction of the chosen norm: sign(g) for inf, g/‖g‖₂ for l2.
Norms are per example, over its T×H coordinates; padding positions are never perturbed.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from mtsmart.regularisers.base import (
    LEVEL, AdversarialContext, AdversarialMethod, AdversarialResult, finite_or_zero, input_gradient,
    mean_norm, perturbed_loss, require_clean, require_labels, with_regulariser,
)
from mtsmart.arithmetic.perturbation import project, steepest_ascent


def fgm_perturbation(grad: Tensor, epsilon: float, norm: str, mask: Tensor) -> Tensor:
    """r = ε · (steepest-ascent direction of g) per example. (N, T, H) → (N, T, H)."""
    return epsilon * steepest_ascent(grad, norm, LEVEL, mask)


def pgd_perturbation(
    loss_at: Callable[[Tensor], Tensor], grad0: Tensor, epsilon: float, step_size: float, steps: int,
    norm: str, mask: Tensor,
) -> tuple[Tensor, int]:
    """r_K of K projected ascent steps from r_0 = 0, and how many steps met a non-finite gradient.

    `loss_at(r)` is L(x + r, y) with x detached; `grad0` = ∇_x L(x, y), the gradient at r_0 = 0,
    which the clean forward already provides. Only ∇_r is formed (no parameter gradients).
    """
    r = torch.zeros_like(grad0)
    grad, skipped = finite_or_zero(grad0)
    for step in range(steps):
        if step > 0:
            r_leaf = r.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(loss_at(r_leaf), r_leaf)
            grad, bad = finite_or_zero(grad)
            skipped += bad
        r = project(r + step_size * steepest_ascent(grad, norm, LEVEL, mask), epsilon, norm, LEVEL, mask)
    return r.detach(), int(skipped)


def perturbed_result(
    ctx: AdversarialContext, adv_loss, r, norm: str, weight: float, skipped: int
) -> AdversarialResult:
    """L(x) + weight · L(x + r) for the objective to back-propagate, with the scalars it logs."""
    return AdversarialResult(
        terms=with_regulariser(ctx, weight * adv_loss),
        scalars={"loss": float(adv_loss.detach()), "delta_norm": mean_norm(r, norm),
                 "embed_norm": mean_norm(ctx.embeds, norm), "skipped": float(skipped)},
    )


class FGM(AdversarialMethod):
    """FGM, and FGSM (= FGM with the inf norm): one ascent step of size ε."""

    scalars = ("loss", "delta_norm", "embed_norm", "skipped")

    def __init__(self, epsilon: float, norm: str, weight: float, name: str = "fgm"):
        self.epsilon, self.norm, self.weight, self.name = epsilon, norm, weight, name

    def __call__(self, ctx: AdversarialContext) -> AdversarialResult:
        labels = require_labels(ctx, self.name)
        _, task_loss = require_clean(ctx, self.name)
        grad, skipped = finite_or_zero(input_gradient(task_loss, ctx.embeds))
        r = fgm_perturbation(grad, self.epsilon, self.norm, ctx.mask)
        # x keeps its graph so the embedding matrix also gets the gradient of L(x + r).
        adv_loss = perturbed_loss(ctx, ctx.embeds + r, labels)
        return perturbed_result(ctx, adv_loss, r, self.norm, self.weight, skipped)


class PGD(AdversarialMethod):
    """K-step PGD; only the last perturbation's loss trains θ (as the seed articles do)."""

    name = "pgd"
    scalars = ("loss", "delta_norm", "embed_norm", "skipped")

    def __init__(self, epsilon: float, step_size: float, steps: int, norm: str, weight: float):
        self.epsilon, self.step_size, self.steps, self.norm, self.weight = epsilon, step_size, steps, norm, weight

    def __call__(self, ctx: AdversarialContext) -> AdversarialResult:
        labels = require_labels(ctx, self.name)
        _, task_loss = require_clean(ctx, self.name)
        x = ctx.embeds.detach()
        r, skipped = pgd_perturbation(
            lambda r: perturbed_loss(ctx, x + r, labels),
            input_gradient(task_loss, ctx.embeds),
            self.epsilon, self.step_size, self.steps, self.norm, ctx.mask,
        )
        adv_loss = perturbed_loss(ctx, ctx.embeds + r, labels)
        return perturbed_result(ctx, adv_loss, r, self.norm, self.weight, skipped)
