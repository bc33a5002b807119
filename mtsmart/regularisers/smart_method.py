"""`adversarial.method=smart`: SMART's Rs behind the regulariser interface (Eq. 1).

The arithmetic is the pure function `mtsmart.arithmetic.smart.smart_regularizer`; this object builds f, the
mask and the divergences for a batch, replays the clean forward's dropout masks when asked
(`smart.dropout=shared`), and counts skipped steps (checkpointed).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from mtsmart.regularisers.base import AdversarialContext, AdversarialMethod, AdversarialResult, with_regulariser
from mtsmart.tasks.batch import Batch
from mtsmart.model.multitask import embedding_output_fn, output_fn
from mtsmart.arithmetic.perturbation import token_mask
from mtsmart.arithmetic.rng import RngSnapshot, replay
from mtsmart.arithmetic.divergence import RELEASED_GRADIENT, Divergence, get_divergence
from mtsmart.arithmetic.smart import SmartResult, off_result, smart_regularizer, warn_if_below_resolution
from mtsmart.options.smart import SmartConfig
from mtsmart.tasks.types import TaskType

log = logging.getLogger(__name__)


def divergences_for(cfg: SmartConfig, task_type: TaskType) -> tuple[Divergence, Divergence]:
    """(ℓ_inner, ℓ_outer) for a task type; "auto" is the type's default (sym_kl or mse). With
    smart.outer_gradient=release, ℓ_outer is the released criterion: the same value, its gradient."""
    outer = task_type.divergence("smart.outer_div", cfg.outer_div)
    return (
        get_divergence(task_type.divergence("smart.inner_div", cfg.inner_div)),
        RELEASED_GRADIENT[outer] if cfg.outer_gradient == "release" else get_divergence(outer),
    )


class SmartRegularizer(AdversarialMethod):
    """Objective L + λs · Rs (Eq. 1); `regularize` returns λs · Rs already weighted.

    Called after the clean forward, with x the tensor `smart.input` names, taken from that
    forward: `model.word_embeddings(batch.input_ids)` fed as `inputs_embeds`, or the embedding
    module's output captured during it (`mtsmart.model.multitask.captured_embedding_output`).
    """

    name = "smart"
    scalars = ("loss", "delta_norm", "embed_norm", "skipped")

    def __init__(self, cfg: SmartConfig):
        self.cfg = cfg
        self.perturbs = cfg.input
        self.calls_total = 0  # steps that computed the term
        self.skipped_total = 0  # of those, steps skipped for a non-finite value
        self.warned_resolution = False

    def check_task_types(self, task_types: Iterable[TaskType]) -> None:
        """Refuse divergences that do not fit a task type, before training starts (λs = 0: none used)."""
        if self.cfg.weight > 0:
            for task_type in task_types:
                divergences_for(self.cfg, task_type)

    def __call__(self, ctx: AdversarialContext) -> AdversarialResult:
        if ctx.clean_output is None:
            raise ValueError("adversarial.method=smart needs the loop's clean output f(x)")
        x = ctx.embeds if self.perturbs == "word_embeddings" else ctx.embedding_output
        if x is None:
            raise ValueError("smart.input=embedding_output needs the embedding output of the loop's clean forward")
        result = self.regularize(ctx.model, ctx.batch, x, ctx.clean_output, ctx.task_type, clean_rng=ctx.clean_rng)
        return AdversarialResult(
            terms=with_regulariser(ctx, result.loss),
            scalars={"loss": float(result.rs), "delta_norm": float(result.delta_norm),
                     "embed_norm": float(result.embed_norm), "skipped": float(result.skipped)},
        )

    def regularize(
        self,
        model: nn.Module,
        batch: Batch,
        embeds: torch.Tensor,
        clean_output: torch.Tensor,
        task_type: TaskType,
        clean_rng: Optional[RngSnapshot] = None,
    ) -> SmartResult:
        """λs · Rs of one batch. clean_rng: the random state the clean forward started from; with
        smart.dropout=shared every perturbed forward replays it, so f(x̃) and f(x) use the same
        dropout masks and Rs measures the perturbation alone (mtsmart.arithmetic.rng)."""
        if self.cfg.weight == 0:
            return off_result(embeds.device)  # λs = 0: nothing to build, nothing to count
        inner, outer = divergences_for(self.cfg, task_type)
        if not self.warned_resolution:
            self.warned_resolution = warn_if_below_resolution(self.cfg, embeds)
        result = smart_regularizer(
            self._forward(model, batch, clean_rng),
            embeds,
            clean_output,
            token_mask(batch.attention_mask, embeds.dtype),
            cfg=self.cfg,
            inner_div=inner,
            outer_div=outer,
        )
        self.calls_total += 1
        if result.skipped:
            self.skipped_total += 1
            log.warning(
                "SMART: non-finite value in task %s, term skipped this step (%d skipped of %d)",
                batch.task, self.skipped_total, self.calls_total,
            )
        return result

    def _forward(
        self, model: nn.Module, batch: Batch, clean_rng: Optional[RngSnapshot]
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        forward = (output_fn if self.cfg.input == "word_embeddings" else embedding_output_fn)(model, batch)
        if self.cfg.dropout == "independent" or not model.training:
            return forward
        if clean_rng is None:
            raise ValueError("smart.dropout=shared needs the random state of the clean forward (clean_rng)")

        def replaying(embeds: torch.Tensor) -> torch.Tensor:
            with replay(clean_rng):
                return forward(embeds)

        return replaying

    def state_dict(self) -> dict[str, Any]:
        return {"calls_total": self.calls_total, "skipped_total": self.skipped_total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls_total = int(state["calls_total"])
        self.skipped_total = int(state["skipped_total"])
