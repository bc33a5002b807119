"""The objective of one micro-batch, owned in one place: its terms, their weights, its backward.

    x ← word embeddings;  f(x; θ) once (shared by L, Rs and D_Breg)
    objective = w_task · ( L(f(x), y) + μ·D_Breg(θ, θ̃) + [the regulariser's weighted term] )   (SMART Eq. 1-2)

The regulariser (`mtsmart.regularisers`) declares what it needs — a clean forward, the embedding
output of that forward, backward passes of its own — and returns its terms (`Terms`); it never
back-propagates by itself: a method that needs gradients mid-way hands terms to the objective's
`backward`. w_task is the task's loss weight (1 unless given): it scales the task's whole
objective, so the balance between L, Rs and D_Breg tuned for a task holds in any mix of tasks
(docs/method.md, "Task weights"). Nothing here depends on which method it is. Used by the
training loop (`mtsmart.recipes.train`), the Trainer integration (`mtsmart.recipes.hf`) and the benchmarks.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Mapping, Optional

import torch
from torch import nn

from mtsmart.arithmetic import rng
from mtsmart.data.loader import derive_seed
from mtsmart.regularisers.base import AdversarialContext, AdversarialMethod, Terms
from mtsmart.tasks.batch import Batch
from mtsmart.regularisers.bregman import BregmanProximal
from mtsmart.model.multitask import captured_embedding_output, task_output, unwrap
from mtsmart.arithmetic.perturbation import token_mask
from mtsmart.tasks.types import task_type_of


class Objective:
    """Assembles and back-propagates each micro-batch's objective.

    backward: back-propagates one loss tensor with the caller's scaling (gradient accumulation,
    AMP loss scale). task_weights: w_task per task name; a task not named has weight 1.
    seed: seeds the private random streams of the regulariser (its noise and the dropout of its
    extra forwards) and of the teacher's forward; None draws them from the global stream.
    """

    def __init__(
        self,
        regulariser: AdversarialMethod,
        bregman: BregmanProximal,
        backward: Callable[[torch.Tensor], None],
        autocast: Callable[[], contextlib.AbstractContextManager],
        task_weights: Optional[Mapping[str, float]] = None,
        seed: Optional[int] = None,
    ):
        self.regulariser, self.bregman = regulariser, bregman
        self._backward, self.autocast = backward, autocast
        self.task_weights = dict(task_weights or {})
        self.streams = None if seed is None else {
            "regulariser": rng.PrivateStream(derive_seed("regulariser", seed)),
            "teacher": rng.PrivateStream(derive_seed("teacher", seed)),
        }

    def private(self, name: str, device: torch.device) -> contextlib.AbstractContextManager:
        """The block draws from stream `name` (or the global stream without private streams)."""
        return contextlib.nullcontext() if self.streams is None else self.streams[name].active(device)

    def state_dict(self) -> dict:
        return {} if self.streams is None else {name: stream.state_dict() for name, stream in self.streams.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, stream in (self.streams or {}).items():
            stream.load_state_dict(state.get(name, {}))  # a checkpoint from before private streams: fresh ones

    def task_weight(self, task: str) -> float:
        return self.task_weights.get(task, 1.0)

    def total(self, terms: Terms, task: str) -> Optional[torch.Tensor]:
        """w_task · (L + μ·D_Breg + the regulariser's term), over the terms present; None if none is."""
        present = [t for t in (terms.task_loss, terms.bregman, terms.regulariser) if t is not None]
        if not present:
            return None
        total = present[0]
        for term in present[1:]:
            total = total + term
        return self.task_weight(task) * total

    def backward(self, terms: Terms, task: str) -> None:
        """Back-propagate the given terms now (the regulariser's mid-way passes, and the final one)."""
        total = self.total(terms, task)
        if total is not None:
            self._backward(total)

    def train_microbatch(self, model: nn.Module, batch: Batch) -> dict[str, float]:
        """Forward, terms and backward of one micro-batch; returns the scalars to log:
        `loss` (the clean task loss), `bregman/reg`, and `adv/<scalar>` for each scalar the regulariser declares."""
        task_type = task_type_of(unwrap(model).specs[batch.task])
        regulariser, stats = self.regulariser, {}
        with self.autocast():
            embeds = unwrap(model).word_embeddings(batch.input_ids)  # x (N, T, H)
            needs_clean = regulariser.needs_clean_forward or self.bregman.enabled
            clean_rng = rng.snapshot(embeds.device)  # the clean forward's dropout masks, for SMART to replay
            capture = regulariser.perturbs == "embedding_output"
            with captured_embedding_output(model) if capture else contextlib.nullcontext([]) as captured:
                clean_output = task_output(model, batch, inputs_embeds=embeds) if needs_clean else None
            clean = Terms(task_loss=task_type.loss(clean_output, batch.labels) if clean_output is not None else None)
            if self.bregman.enabled:
                with self.private("teacher", embeds.device):  # the teacher's dropout masks, if it has any
                    term = self.bregman.term(model, batch, clean_output)
                clean.bregman = term.loss
                stats["bregman/reg"] = term.divergence
            context = AdversarialContext(
                model=model,
                batch=batch,
                task_type=task_type,
                embeds=embeds,
                mask=token_mask(batch.attention_mask, embeds.dtype),
                clean_output=clean_output,
                clean=clean,
                backward=lambda terms: self.backward(terms, batch.task),
                clean_rng=clean_rng,
                embedding_output=captured[0] if captured else None,
            )
            # A method with a clean forward draws its noise and extra dropout masks privately; one
            # whose own forward is the task's (FreeLB, the gradient penalty) draws as that forward would.
            with self.private("regulariser", embeds.device) if regulariser.needs_clean_forward else contextlib.nullcontext():
                result = regulariser(context)
        self.backward(result.terms, batch.task)
        if clean.task_loss is not None:
            stats["loss"] = clean.task_loss.item()
        stats.update({f"adv/{name}": result.scalars[name] for name in regulariser.scalars})
        return stats
