"""R3F (Aghajanyan et al., ICLR 2021): L + λ · ℓs(f(x + r), f(x)), r random, no ascent.

r ~ N(0, σ²) or U(−σ, σ) per coordinate (σ = `r3f.init_scale`), zero at padding; ℓs is the task type's divergence
(symmetric KL for classification and ranking, squared error for regression), with gradients
through both outputs as in R3F's code. Label-free: one extra forward, no extra backward.
"""
from __future__ import annotations

from typing import Optional

import torch

from mtsmart.regularisers.base import (
    AdversarialContext, AdversarialResult, RandomStartMethod, mean_norm, random_start, with_regulariser,
)
from mtsmart.arithmetic.divergence import get_divergence
from mtsmart.model.multitask import task_output


class R3F(RandomStartMethod):
    name = "r3f"
    scalars = ("loss", "delta_norm", "embed_norm")

    def __init__(self, init: str, init_scale: float, weight: float, generator: Optional[torch.Generator] = None):
        super().__init__(generator)
        self.init, self.init_scale, self.weight = init, init_scale, weight

    def __call__(self, ctx: AdversarialContext) -> AdversarialResult:
        if ctx.clean_output is None:
            raise ValueError("adversarial.method=r3f needs the loop's clean output f(x)")
        noise = random_start(ctx.embeds, self.init, self.init_scale, ctx.mask, self.generator)
        noisy_output = task_output(ctx.model, ctx.batch, inputs_embeds=ctx.embeds + noise)
        divergence = get_divergence(ctx.task_type.default_divergence)(noisy_output, ctx.clean_output)
        return AdversarialResult(
            terms=with_regulariser(ctx, self.weight * divergence),
            scalars={"loss": float(divergence.detach()), "delta_norm": mean_norm(noise, "l2"),
                     "embed_norm": mean_norm(ctx.embeds, "l2")},
        )
