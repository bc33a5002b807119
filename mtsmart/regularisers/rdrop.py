"""R-Drop (Liang et al., NeurIPS 2021): the task loss on two dropout samples of the same input,
plus α times their disagreement. docs/method.md "Two readings" explains why it matters here: SMART as its authors
ran it (independent dropout masks in every pass) is largely this dropout-consistency term.

    L = ½ (L(f₁(x), y) + L(f₂(x), y)) + α · ½ (KL(P₁‖P₂) + KL(P₂‖P₁))     classification, ranking
    L = ½ (L(f₁(x), y) + L(f₂(x), y)) + α · (f₁(x) − f₂(x))²               regression

f₁ is the loop's clean forward, f₂ a second forward of the same x with fresh dropout masks (the
random state has moved on). The task loss is averaged over the two passes, as R-Drop's code
does, so the learning rate means what it means for plain fine-tuning. α = `rdrop.alpha`
(the paper: 0.1–1 on GLUE, 1 by default here). One extra forward, no extra backward.
"""
from __future__ import annotations

from mtsmart.regularisers.base import (
    AdversarialContext, AdversarialMethod, AdversarialResult, Terms, require_clean, require_labels,
)
from mtsmart.arithmetic.divergence import get_divergence
from mtsmart.model.multitask import task_output

# R-Drop's disagreement from the task type's divergence: the symmetric KL is KL + reverse KL,
# R-Drop averages the two directions; squared error is used as it is.
_SCALE = {"sym_kl": 0.5, "mse": 1.0}


def rdrop_consistency(first, second, divergence_name: str):
    """R-Drop's disagreement between two dropout samples' outputs (batch mean, float32)."""
    return _SCALE[divergence_name] * get_divergence(divergence_name)(second, first)


class RDrop(AdversarialMethod):
    name = "rdrop"
    scalars = ("loss",)  # the two passes' disagreement

    def __init__(self, alpha: float):
        self.weight = alpha  # α

    def __call__(self, ctx: AdversarialContext) -> AdversarialResult:
        first, first_loss = require_clean(ctx, self.name)
        labels = require_labels(ctx, self.name)
        second = task_output(ctx.model, ctx.batch, inputs_embeds=ctx.embeds)  # new dropout masks
        second_loss = ctx.task_type.loss(second, labels)
        consistency = rdrop_consistency(first, second, ctx.task_type.default_divergence)
        terms = Terms(task_loss=0.5 * (first_loss + second_loss), bregman=ctx.clean.bregman,
                      regulariser=self.weight * consistency)  # the two passes' mean replaces L(f₁)
        return AdversarialResult(terms=terms, scalars={"loss": float(consistency.detach())})
