"""The interface between the training loop and every adversarial-training method.

The loop computes x = word_embeddings(input_ids) and (unless the method replaces the task loss)
the clean output f(x; θ) and loss, then hands an `AdversarialContext` to the method, which
returns what the loop must still back-propagate plus scalars for TensorBoard.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from mtsmart.adversarial.config import AdversarialConfig
from mtsmart.batch import Batch
from mtsmart.rng import RngSnapshot
from mtsmart.model import task_output
from mtsmart.perturbation import unit_norm
from mtsmart.smart import SmartConfig
from mtsmart.task_types import TaskType

# One perturbation per example (encoder sequence): the norm is over its T×H coordinates, as in
# FGM (Miyato 2017), PGD on text and FreeLB (Zhu 2020).
LEVEL = "sentence"


@dataclass
class AdversarialContext:
    model: nn.Module  # MultiTaskModel, or DistributedDataParallel wrapping one
    batch: Batch
    task_type: TaskType
    embeds: Tensor  # x (N, T, H), inside the parameter graph
    mask: Tensor  # (N, T, 1) float, 1 = real token
    clean_output: Optional[Tensor]  # f(x; θ); None only if nothing needed a clean forward
    task_loss: Optional[Tensor]  # L(x, y) on clean_output
    loss: Optional[Tensor]  # the loop's total loss so far, not yet back-propagated
    backward: Callable[[Tensor], None]  # back-propagates a loss now, with the loop's scaling
    clean_rng: Optional[RngSnapshot] = None  # random state the clean forward started from (its dropout masks)
    embedding_output: Optional[Tensor] = None  # the embedding module's output in the clean forward, when the method perturbs it


@dataclass
class AdversarialResult:
    loss: Optional[Tensor]  # what the loop must still back-propagate; None if nothing is left
    adv_loss: float  # the perturbed loss / regulariser value (train/adv/loss)
    delta_norm: float  # mean per-example ‖r‖ under the method's norm; 0 without a perturbation
    stats: dict[str, float] = field(default_factory=dict)  # logged as train/adv/<name>


class AdversarialMethod:
    """One small object per method; the arithmetic lives in pure functions beside it."""

    replaces_task_loss: bool = False  # True: the loop skips the clean forward and L(x)
    # The tensor the method perturbs: "word_embeddings" (ctx.embeds) or "embedding_output"
    # (the loop then captures ctx.embedding_output from its clean forward).
    perturbs: str = "word_embeddings"

    def __call__(self, ctx: AdversarialContext) -> AdversarialResult:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got keys {sorted(state)}")


class NoAdversary(AdversarialMethod):
    """`method: none`: plain fine-tuning."""

    def __call__(self, ctx: AdversarialContext) -> AdversarialResult:
        return AdversarialResult(loss=ctx.loss, adv_loss=0.0, delta_norm=0.0)


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


def core_model(model: nn.Module) -> nn.Module:
    """The MultiTaskModel inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


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
        raise ValueError(f"adversarial.init: unknown random start {init!r}")
    return noise.to(device=like.device, dtype=like.dtype) * mask


def add(loss: Optional[Tensor], term: Tensor) -> Tensor:
    return term if loss is None else loss + term


def build_adversary(
    adv: AdversarialConfig, smart: SmartConfig, generator: Optional[torch.Generator] = None
) -> AdversarialMethod:
    """The method `adversarial.method` selects. `smart` configures method smart.

    `generator` draws the random starts of FreeLB and R3F; None uses torch's global RNG (which the
    loop seeds and checkpoints).
    """
    # Imported here: the method modules import this one for the context/result types.
    from mtsmart.adversarial.ascent import FGM, PGD
    from mtsmart.adversarial.freelb import FreeLB
    from mtsmart.adversarial.gradient_penalty import GradientPenalty
    from mtsmart.adversarial.matrix import MatrixAttack
    from mtsmart.adversarial.r3f import R3F
    from mtsmart.adversarial.rdrop import RDrop

    norm = adv.resolved_norm
    if adv.method == "none":
        return NoAdversary()
    if adv.method == "smart":
        from mtsmart.adversarial.smart_method import SmartMethod

        return SmartMethod(smart)
    if adv.scope == "matrix":
        if adv.method == "pgd":
            return MatrixAttack(
                step_size=adv.alpha, steps=adv.steps, norm=norm, radius=adv.epsilon, weight=adv.weight
            )
        # fgsm / fgm: one step of size ε, no projection.
        return MatrixAttack(step_size=adv.epsilon, steps=1, norm=norm, radius=None, weight=adv.weight)
    if adv.method in ("fgsm", "fgm"):
        return FGM(epsilon=adv.epsilon, norm=norm, weight=adv.weight, name=adv.method)
    if adv.method == "pgd":
        return PGD(epsilon=adv.epsilon, alpha=adv.alpha, steps=adv.steps, norm=norm, weight=adv.weight)
    if adv.method == "freelb":
        return FreeLB(
            epsilon=adv.epsilon, alpha=adv.alpha, steps=adv.steps, norm=norm,
            init=adv.init, init_scale=adv.init_scale, generator=generator,
        )
    if adv.method == "gradient_penalty":
        return GradientPenalty(epsilon=adv.epsilon, weight=adv.weight)
    if adv.method == "r3f":
        return R3F(init=adv.init, sigma=adv.init_scale, weight=adv.weight, generator=generator)
    if adv.method == "rdrop":
        return RDrop(weight=adv.weight)
    raise ValueError(f"adversarial.method: unknown method {adv.method!r}")
