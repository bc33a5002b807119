"""One micro-batch of training: the forward, the objective's terms and their backward.

    x ← word embeddings;  f(x; θ) once (shared by L, Rs and D_Breg)
    loss = L(f(x), y) + μ·D_Breg(θ, θ̃) + [the regulariser's term]   (SMART Eq. 1-2)

The regulariser (`mtsmart.adversarial`) says what it needs — a clean forward, the embedding
output of that forward — and which scalars it logs; nothing here depends on which method it is.
Used by the training loop (`mtsmart.train`), the Trainer integration (`mtsmart.hf`) and the
benchmarks.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from mtsmart import rng
from mtsmart.adversarial.base import AdversarialContext, AdversarialMethod
from mtsmart.batch import Batch
from mtsmart.bregman import BregmanProximal
from mtsmart.model import captured_embedding_output, task_output, unwrap
from mtsmart.perturbation import token_mask
from mtsmart.task_types import task_type_of


def train_microbatch(
    model: nn.Module,
    batch: Batch,
    adversary: AdversarialMethod,
    bregman: BregmanProximal,
    backward: Callable[[torch.Tensor], None],
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> dict[str, float]:
    """Forward, losses and backward of one micro-batch; returns the scalars to log:
    `loss` (the clean task loss), `bregman/reg`, and `adv/<scalar>` for each scalar the regulariser declares."""
    task_type = task_type_of(unwrap(model).specs[batch.task])
    stats: dict[str, float] = {}
    with autocast():
        embeds = unwrap(model).word_embeddings(batch.input_ids)  # x (N, T, H)
        needs_clean = not adversary.computes_task_loss or bregman.enabled
        clean_rng = rng.snapshot(embeds.device)  # the clean forward's dropout masks, for SMART to replay
        capture = adversary.perturbs == "embedding_output"
        with captured_embedding_output(model) if capture else contextlib.nullcontext([]) as captured:
            clean = task_output(model, batch, inputs_embeds=embeds) if needs_clean else None
        task_loss = task_type.loss(clean, batch.labels) if clean is not None else None
        loss = None if adversary.computes_task_loss else task_loss
        if bregman.enabled:
            term = bregman.term(model, batch, clean)
            loss = term.loss if loss is None else loss + term.loss
            stats["bregman/reg"] = term.divergence
        context = AdversarialContext(
            model=model,
            batch=batch,
            task_type=task_type,
            embeds=embeds,
            mask=token_mask(batch.attention_mask, embeds.dtype),
            clean_output=clean,
            task_loss=task_loss,
            loss=loss,
            backward=backward,
            clean_rng=clean_rng,
            embedding_output=captured[0] if captured else None,
        )
        result = adversary(context)
    if result.loss is not None:
        backward(result.loss)
    if task_loss is not None:
        stats["loss"] = task_loss.item()
    stats.update({f"adv/{name}": result.scalars[name] for name in adversary.scalars})
    return stats
