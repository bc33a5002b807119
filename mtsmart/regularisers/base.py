"""The one interface between the training loop and every regulariser of the adversarial family
(SMART's Rs, FGSM, FGM, PGD, FreeLB, the gradient penalty, R3F, R-Drop; the Bregman term is an
optimizer wrapper, mtsmart.regularisers.bregman).

The objective's owner (`mtsmart.step.objective.Objective`) computes x = word_embeddings(input_ids) and
(unless the method computes the task loss itself) the clean output f(x; θ), the task loss and the
Bregman term, then hands an `AdversarialContext` to the method, which returns the `Terms` still
to back-propagate and the scalars it declared. Each method says what it needs in class
attributes; the owner reads those, never a method's name (`mtsmart.regularisers.registry` maps
the config's names to classes).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import torch
from torch import Tensor, nn

from mtsmart.tasks.batch import Batch
from mtsmart.arithmetic.rng import RngSnapshot
from mtsmart.model.multitask import task_output
from mtsmart.arithmetic.perturbation import unit_norm
from mtsmart.tasks.types import TaskType

# One perturbation per example (encoder sequence): the norm is over its T×H coordinates, as in
# FGM (Miyato 2017), PGD on text and FreeLB (Zhu 2020).
LEVEL = "example"


@dataclass
class Terms:
    """Parts of one micro-batch's objective, not yet back-propagated. The objective's owner
    (`mtsmart.step.objective.Objective`) adds the present ones in this order and applies the task's weight."""

    task_loss: Optional[Tensor] = None  # L(θ): the task loss of the batch
    bregman: Optional[Tensor] = None  # μ · D_Breg(θ, θ̃), from the Bregman wrapper
    regulariser: Optional[Tensor] = None  # the method's own term, its weight applied (λs·Rs, weight·L(x + r), α·consistency, ...)


@dataclass
class AdversarialContext:
    model: nn.Module  # MultiTaskModel, or DistributedDataParallel wrapping one
    batch: Batch
    task_type: TaskType
    embeds: Tensor  # x (N, T, H), inside the parameter graph
    mask: Tensor  # (N, T, 1) float, 1 = real token
    clean_output: Optional[Tensor]  # f(x; θ); None only if nothing needed a clean forward
    clean: Terms  # the clean forward's task loss (None without one) and the Bregman term
    backward: Callable[[Terms], None]  # the objective's backward of terms now (weighted and scaled by the owner)
    clean_rng: Optional[RngSnapshot] = None  # random state the clean forward started from (its dropout masks)
    embedding_output: Optional[Tensor] = None  # the embedding module's output in the clean forward, when the method perturbs it

    @property
    def task_loss(self) -> Optional[Tensor]:
        """L(x, y) on clean_output."""
        return self.clean.task_loss


@dataclass
class AdversarialResult:
    terms: Terms  # what the objective must still back-propagate (nothing already back-propagated)
    scalars: dict[str, float] = field(default_factory=dict)  # exactly the method's declared `scalars`


class AdversarialMethod:
    """One small object per method; the arithmetic lives in pure functions beside it.

    What a method needs from the objective, and what it logs, are declared in the class attributes
    below; the objective reads them and never a method's name. A method never back-propagates
    on its own: it returns its terms, and a method that needs gradients mid-way (FreeLB, the
    matrix attack) hands terms to `ctx.backward`, the objective's own backward.
    """

    name: str = ""  # its `adversarial.method` value, for messages
    # False: the method computes the task loss itself (in a forward of its own); the objective
    # runs its clean forward only when the Bregman term needs one.
    needs_clean_forward: bool = True
    # True: the method back-propagates inside the micro-batch as well as the objective's final
    # backward, so DistributedDataParallel cannot average the gradients in a backward (mtsmart.components.distributed).
    extra_backward: bool = False
    # The tensor it perturbs: "word_embeddings" (ctx.embeds) or "embedding_output" (the objective
    # then captures ctx.embedding_output from its clean forward).
    perturbs: str = "word_embeddings"
    # Logged as adv/<scalar> (docs/tensorboard.md); "loss" (its own term before its weight)
    # also per task as adv/<task>/loss.
    scalars: tuple[str, ...] = ("loss", "delta_norm")

    def __call__(self, ctx: AdversarialContext) -> AdversarialResult:
        raise NotImplementedError

    def check_task_types(self, task_types: Iterable[TaskType]) -> None:
        """Refuse options that do not fit a task type, before anything is loaded (default: all fit)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got keys {sorted(state)}")


class NoAdversary(AdversarialMethod):
    """`method: none`: plain fine-tuning."""

    name = "none"
    scalars = ()

    def __call__(self, ctx: AdversarialContext) -> AdversarialResult:
        return AdversarialResult(terms=ctx.clean)


class RandomStartMethod(AdversarialMethod):
    """A method that draws noise; a private generator, if given, is part of its checkpoint state."""

    def __init__(self, generator: Optional[torch.Generator]):
        self.generator = generator

    def state_dict(self) -> dict[str, Any]:
        return {} if self.generator is None else {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.generator is None:
            super().load_state_dict(state)
        else:
            self.generator.set_state(state["generator"])


def require_labels(ctx: AdversarialContext, method: str) -> Tensor:
    if ctx.batch.labels is None:
        raise ValueError(
            f"adversarial.method={method} needs labels (it perturbs against L(x, y)), but the batch of "
            f"task {ctx.batch.task!r} has none; use r3f or smart for unlabelled data"
        )
    return ctx.batch.labels


def require_clean(ctx: AdversarialContext, method: str) -> tuple[Tensor, Tensor]:
    """The clean output and task loss of the loop's clean forward, which these methods build on."""
    if ctx.clean_output is None or ctx.task_loss is None:
        raise ValueError(f"adversarial.method={method} needs the loop's clean forward (clean_output and task_loss)")
    return ctx.clean_output, ctx.task_loss


def perturbed_loss(ctx: AdversarialContext, inputs_embeds: Tensor, labels: Tensor) -> Tensor:
    """L(x + r, y): the task loss of one forward from the given embeddings."""
    return ctx.task_type.loss(task_output(ctx.model, ctx.batch, inputs_embeds=inputs_embeds), labels)


def input_gradient(loss: Tensor, embeds: Tensor) -> Tensor:
    """∇_x loss (N, T, H) by an input-only backward that keeps the graph for the loop's backward.

    Only the path to x is differentiated (no parameter gradients are formed or accumulated),
    which costs about one forward. Back-propagating the loop's loss with `embeds.retain_grad()`
    would save that, but it yields ∇_x of the *total* loss (task loss plus e.g. the Bregman term),
    not ∇_x L(x, y) as FGM/FGSM/PGD are defined.
    """
    if not embeds.requires_grad:
        raise ValueError("adversarial training needs ∇_x: the word embeddings x must require grad")
    (grad,) = torch.autograd.grad(loss, embeds, retain_graph=True)
    return grad


def finite_or_zero(grad: Tensor) -> tuple[Tensor, bool]:
    """A non-finite gradient (e.g. an AMP overflow) gives no ascent step rather than a NaN perturbation."""
    if bool(torch.isfinite(grad).all()):
        return grad, False
    return torch.zeros_like(grad), True


def mean_norm(v: Tensor, norm: str) -> float:
    """Mean over examples of ‖v_i‖_p over its T×H coordinates (for logging)."""
    return float(unit_norm(v.detach().float(), norm, LEVEL).mean())


def random_start(
    like: Tensor, init: str, scale: float, mask: Tensor, generator: Optional[torch.Generator]
) -> Tensor:
    """Noise shaped like x (N, T, H): N(0, scale²) or U(−scale, scale) per coordinate, zero at padding.

    With a generator, it is drawn on the generator's device in float32 and then moved, so a
    seeded generator gives the same noise whatever the model's device and dtype.
    """
    device = like.device if generator is None else generator.device
    dtype = like.dtype if generator is None else torch.float32
    if init == "zero":
        noise = torch.zeros(like.shape, device=device, dtype=dtype)
    elif init == "normal":
        noise = torch.randn(like.shape, generator=generator, device=device, dtype=dtype) * scale
    elif init == "uniform":
        noise = (torch.rand(like.shape, generator=generator, device=device, dtype=dtype) * 2 - 1) * scale
    else:
        raise ValueError(f"init: unknown random start {init!r}")
    return noise.to(device=like.device, dtype=like.dtype) * mask


def with_regulariser(ctx: AdversarialContext, term: Tensor) -> Terms:
    """The clean forward's terms plus the method's own (weighted) term."""
    return dataclasses.replace(ctx.clean, regulariser=term)
