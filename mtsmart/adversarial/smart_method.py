"""`method: smart`: SMART's Rs (mtsmart.smart.SmartRegularizer) behind the adversarial interface."""
from __future__ import annotations

from typing import Any

from mtsmart.adversarial.base import AdversarialContext, AdversarialMethod, AdversarialResult, add
from mtsmart.smart import SmartConfig, SmartRegularizer


class SmartMethod(AdversarialMethod):
    """Objective L + λs · Rs (Eq. 1); the regulariser returns λs · Rs already weighted."""

    def __init__(self, cfg: SmartConfig):
        self.regularizer = SmartRegularizer(cfg)
        self.perturbs = cfg.input

    def __call__(self, ctx: AdversarialContext) -> AdversarialResult:
        if ctx.clean_output is None:
            raise ValueError("adversarial.method=smart needs the loop's clean output f(x)")
        x = ctx.embeds if self.perturbs == "word_embeddings" else ctx.embedding_output
        if x is None:
            raise ValueError("smart.input=embedding_output needs the embedding output of the loop's clean forward")
        result = self.regularizer(
            ctx.model, ctx.batch, x, ctx.clean_output, ctx.task_type.name, clean_rng=ctx.clean_rng
        )
        return AdversarialResult(
            loss=add(ctx.loss, result.loss),
            adv_loss=float(result.rs),
            delta_norm=float(result.delta_norm),
            stats={"embed_norm": float(result.embed_norm), "skipped": float(result.skipped)},
        )

    def state_dict(self) -> dict[str, Any]:
        return self.regularizer.state_dict()  # its call and skip counters

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.regularizer.load_state_dict(state)
