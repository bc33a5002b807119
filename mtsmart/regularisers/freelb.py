"""FreeLB (Zhu et al., ICLR 2020, Algorithm 1): K "free" ascent steps on the embeddings.

    δ_0 = Π_{‖δ‖≤ε}(noise),  noise ~ N(0, s²) or U(−s, s) per coordinate (s = init_scale)
    for t = 0 … K−1:
        back-propagate L(x + δ_t, y) / K       → θ's gradients accumulate, and ∇_δ comes for free
        δ_{t+1} = Π_{‖δ‖≤ε}(δ_t + η · g_t/‖g_t‖),  g_t = ∇_δ L(x + δ_t, y)
    θ's gradient = 1/K Σ_t ∇_θ L(x + δ_t, y)   (the objective; there is no clean L(x, y))

K forward-backward passes per batch: each backward gives both θ's and δ's gradient.
(FreeLB's own code scales the initial noise by 1/√(T·H); here `init_scale` is the noise itself.)
"""
from __future__ import annotations

from typing import Optional

import torch

from mtsmart.regularisers.base import (
    LEVEL, AdversarialContext, AdversarialResult, RandomStartMethod, finite_or_zero, mean_norm,
    Terms, perturbed_loss, random_start, require_labels,
)
from mtsmart.model.multitask import unwrap
from mtsmart.arithmetic.perturbation import project, steepest_ascent


class FreeLB(RandomStartMethod):
    name = "freelb"
    needs_clean_forward = False  # its task loss is the mean perturbed loss; there is no clean L(x, y)
    extra_backward = True  # one backward per ascent step
    scalars = ("loss", "delta_norm", "embed_norm", "skipped")

    def __init__(
        self, epsilon: float, step_size: float, steps: int, norm: str, init: str, init_scale: float,
        generator: Optional[torch.Generator] = None,
    ):
        super().__init__(generator)
        self.epsilon, self.step_size, self.steps, self.norm = epsilon, step_size, steps, norm
        self.init, self.init_scale = init, init_scale

    def __call__(self, ctx: AdversarialContext) -> AdversarialResult:
        labels = require_labels(ctx, self.name)
        noise = random_start(ctx.embeds, self.init, self.init_scale, ctx.mask, self.generator)
        delta = project(noise, self.epsilon, self.norm, LEVEL, ctx.mask)
        losses, skipped = [], 0
        for step in range(self.steps):
            delta = delta.detach().requires_grad_(True)
            # A fresh lookup per step: each backward frees the graph it goes through, and the
            # embedding matrix must get the gradient of every step (as FreeLB's code does).
            x = unwrap(ctx.model).word_embeddings(ctx.batch.input_ids)
            loss = perturbed_loss(ctx, x + delta, labels)
            ctx.backward(Terms(task_loss=loss / self.steps))
            losses.append(float(loss.detach()))
            if step < self.steps - 1:  # δ_K would never be used
                grad, bad = finite_or_zero(delta.grad)
                skipped += bad
                delta = project(
                    delta.detach() + self.step_size * steepest_ascent(grad, self.norm, LEVEL, ctx.mask),
                    self.epsilon, self.norm, LEVEL, ctx.mask,
                )
        return AdversarialResult(
            terms=Terms(bregman=ctx.clean.bregman),  # the task loss is back-propagated already
            scalars={"loss": sum(losses) / len(losses), "delta_norm": mean_norm(delta, self.norm),
                     "embed_norm": mean_norm(ctx.embeds, self.norm), "skipped": float(skipped)},
        )
