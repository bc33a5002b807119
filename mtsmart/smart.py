"""SMART smoothness-inducing adversarial regulariser Rs (Jiang et al. 2020, Eq. 1, Algorithm 1).

    Rs(θ) = 1/n Σ_i  max_{‖x̃_i − x_i‖_p ≤ ε}  ℓs( f(x̃_i; θ), f(x_i; θ) )

x is the word-embedding output (N, T, H) of a batch (`MultiTaskModel.word_embeddings`), so the
perturbed x̃ = x + δ can be fed back as `inputs_embeds` without applying position/type
embeddings twice (SMART.md §4.2). Two layers, as in composer:

- `smart_regularizer(...)`: the pure function, one call per training step;
- `SmartRegularizer(cfg)`: the object the training loop calls with a model and a batch; it
  picks the divergences of the task type and counts skipped steps (checkpointed).

Cost per step with K ascent steps: the clean forward is the loop's (shared with the task loss);
then K × (forward of x + δ, backward to δ only) and 1 × (forward of x + δ with the loss's
backward into θ). Nothing else: no extra clean forward and no parameter gradient in the ascent.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Optional

import torch
from torch import nn

from mtsmart.batch import Batch
from mtsmart.divergence import (
    DIVERGENCES,
    DIVERGENCES_FOR_DISTRIBUTIONS,
    DIVERGENCES_FOR_SCORES,
    Divergence,
    get_divergence,
)
from mtsmart.model import embedding_output_fn, output_fn
from mtsmart.rng import RngSnapshot, replay
from mtsmart.perturbation import LEVELS, NORMS, Radius, normalize, project, token_mask, unit_norm, unit_radius
from mtsmart.task_types import TASK_TYPES

log = logging.getLogger(__name__)

UPDATES = ("paper", "reference", "release")
# What x is: the word-embedding output (the paper's text, SMART.md §1) or the encoder's embedding
# module output after its LayerNorm and dropout (the authors' released code, SMART.md §7).
INPUTS = ("word_embeddings", "embedding_output")
# Task types whose outputs are scores (B,) rather than logits of a distribution.
SCORE_TASK_TYPES = ("regression",)


@dataclass
class SmartConfig:
    weight: float = 1.0  # λs; 0 turns Rs off and costs nothing
    steps: int = 1  # K (the paper's T_x̃): ascent steps
    step_size: float = 1e-3  # η
    noise_std: float = 1e-5  # σ of the initial noise ν ~ N(0, σ² I)
    epsilon: float = 1e-5  # ε: the projection radius (update=paper); only a division guard for reference and release
    epsilon_relative: bool = False  # ε relative to each unit's embedding norm (SMART.md §6)
    norm: Literal["inf", "l2", "l1"] = "inf"  # p of the ball ‖x̃ − x‖_p ≤ ε and of the ascent normalisation
    level: Literal["token", "sentence"] = "token"  # perturbation unit: each token (H) or each example (T×H)
    inner_div: Literal["auto", "sym_kl", "kl", "stable_kl", "mse"] = "auto"  # auto: by task type
    outer_div: Literal["auto", "sym_kl", "kl", "stable_kl", "mse"] = "auto"  # the ℓs that trains θ; auto: by task type
    update: Literal["paper", "reference", "release"] = "paper"  # paper: Algorithm 1; reference: the public code's unit-norm rule; release: x + η·g/‖g‖ as the authors ran it
    input: Literal["word_embeddings", "embedding_output"] = "word_embeddings"  # the perturbed tensor x: word embeddings (the paper's text) or the embedding module's output (the released code)
    strict: bool = False  # raise on a non-finite ascent gradient instead of skipping the term
    dropout: Literal["shared", "independent"] = "shared"  # perturbed forwards reuse the clean forward's dropout masks, or draw new ones (the reference code)

    def __post_init__(self) -> None:
        for key in ("weight", "step_size", "noise_std", "epsilon"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"smart.{key} must be a finite number >= 0, got {value!r}")
        if self.steps < 0:
            raise ValueError(f"smart.steps must be >= 0, got {self.steps!r}")
        _check_choice("norm", self.norm, NORMS)
        _check_choice("level", self.level, LEVELS)
        _check_choice("update", self.update, UPDATES)
        _check_choice("input", self.input, INPUTS)
        _check_choice("dropout", self.dropout, ("shared", "independent"))
        _check_choice("inner_div", self.inner_div, ("auto", *DIVERGENCES))
        _check_choice("outer_div", self.outer_div, ("auto", *DIVERGENCES))
        if self.update != "paper" and self.epsilon_relative:
            # The reference and release rules have no radius (ε is only their denominator guard),
            # so a relative radius would be parsed and ignored: refuse it.
            raise ValueError(f"smart.epsilon_relative=true has no meaning with smart.update={self.update} (no projection radius)")


def _check_choice(key: str, value: str, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"smart.{key} must be one of {choices}, got {value!r}")


@dataclass
class SmartResult:
    loss: torch.Tensor  # λs · Rs, scalar, to add to the task loss; a zero tensor without graph if skipped/off
    rs: float  # Rs (unweighted) of this step; 0.0 when skipped or off
    delta_norm: float  # mean over real units of ‖δ‖_p; 0.0 when skipped or off
    embed_norm: float  # mean over real units of ‖x‖_p, to compare with delta_norm and ε
    skipped: bool  # True if a non-finite value made this step skip the term


def _off(device: torch.device, embed_norm: float = 0.0, skipped: bool = False) -> SmartResult:
    return SmartResult(torch.zeros((), device=device), 0.0, 0.0, embed_norm, skipped)


# --------------------------------------------------------------------------- the pure function


def smart_regularizer(
    forward: Callable[[torch.Tensor], torch.Tensor],
    embeds: torch.Tensor,
    clean_output: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: SmartConfig,
    inner_div: Divergence,
    outer_div: Divergence,
    generator: Optional[torch.Generator] = None,
) -> SmartResult:
    """λs · Rs(θ) of one batch (Eq. 1) with the inner max by Algorithm 1.

    forward: embeddings (N, T, H) → task output, e.g. `mtsmart.model.output_fn(model, batch)`.
    embeds: x (N, T, H), the word-embedding output, part of the parameters' autograd graph.
    clean_output: f(x; θ) from the loop's clean forward (shared with the task loss; not
        recomputed here). Gradient flows into θ through it and through x (Danskin: only x̃ is
        held fixed).
    mask: (N, T, 1), 1 at real tokens (`perturbation.token_mask`); padding is never perturbed.
    generator: draws the initial noise ν; None uses the global RNG.
    """
    if cfg.weight == 0:
        return _off(embeds.device)  # λs = 0: plain fine-tuning, no forward or backward
    # The ascent in float32 whatever dtype x arrives in (a tensor captured under autocast may be
    # half precision): a bf16 δ would round η·g̃ away and normalise g in 8 bits.
    x = embeds.detach().float()
    embed_norm = _mean_unit_norm(x, cfg, mask)
    radius = unit_radius(x, cfg.epsilon, cfg.epsilon_relative, cfg.norm, cfg.level)
    delta = _initial_noise(x, cfg.noise_std, mask, generator)  # ν ~ N(0, σ² I)
    if cfg.steps == 0 and cfg.update == "paper":
        delta = project(delta, radius, cfg.norm, cfg.level, mask)  # so ‖δ‖_p ≤ ε holds with K = 0 too
    target = clean_output.detach()  # f(x) is a constant of the inner maximisation
    for step in range(cfg.steps):
        inner, grad = _ascent_gradient(forward, x, delta, target, inner_div)
        if not bool(torch.isfinite(inner) & torch.isfinite(grad).all()):  # one host sync per step
            return _skip(cfg, embeds.device, embed_norm, f"non-finite inner divergence or ascent gradient at step {step + 1}")
        delta = _update(delta, grad, radius, cfg, mask)
    # Outer term: x̃ = x + δ with δ held fixed; x and f(x) stay in the graph of θ.
    rs = outer_div(forward(embeds + delta), clean_output)
    rs_value = float(rs.detach())
    if not math.isfinite(rs_value):
        return _skip(cfg, embeds.device, embed_norm, "non-finite outer divergence")
    return SmartResult(cfg.weight * rs, rs_value, _mean_unit_norm(delta, cfg, mask), embed_norm, False)


def _initial_noise(x: torch.Tensor, std: float, mask: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return noise * std * mask


def _ascent_gradient(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    delta: torch.Tensor,
    target: torch.Tensor,
    inner_div: Divergence,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ℓ_inner(f(x + δ), f(x)), g = ∇_δ ℓ_inner) with g (N, T, H); nothing else.

    x is detached and `inputs=delta` makes autograd run only the nodes on the path to δ, so no
    parameter gradient is computed or accumulated into `.grad` (measured: freezing the
    parameters for this forward is no faster on CPU; docs/performance.md).
    """
    delta = delta.detach().requires_grad_()
    inner = inner_div(forward(x + delta), target)
    (grad,) = torch.autograd.grad(inner, inputs=delta)
    return inner.detach(), grad


def _update(delta: torch.Tensor, grad: torch.Tensor, radius: Radius, cfg: SmartConfig, mask: torch.Tensor) -> torch.Tensor:
    """One step of the inner maximisation; returns the new δ (N, T, H), detached."""
    delta = delta.detach()
    if cfg.update == "release":
        # The authors' released code (SMART.md §7): δ = η · g / (‖g‖ + ε) per unit, with no
        # projection; the previous δ (the noise ν at the first step) only seeded g and is dropped.
        grad = grad * mask
        return cfg.step_size * grad / (unit_norm(grad, cfg.norm, cfg.level) + cfg.epsilon)
    if cfg.update == "paper":
        # Algorithm 1: g̃ = g / ‖g‖; x̃ ← Π_{‖x̃ − x‖_p ≤ ε}(x̃ + η g̃).
        ascended = delta + cfg.step_size * normalize(grad, cfg.norm, cfg.level, mask)
        return project(ascended, radius, cfg.norm, cfg.level, mask)
    # The public code's rule (SMART.md §4 defect 3), for comparison only: δ ← (δ + η g) scaled
    # to unit norm per unit, ε a mere guard in the denominator, so ‖δ‖_p ≈ 1 whatever ε is.
    ascended = (delta + cfg.step_size * grad) * mask
    return ascended / (unit_norm(ascended, cfg.norm, cfg.level) + cfg.epsilon)


def _mean_unit_norm(v: torch.Tensor, cfg: SmartConfig, mask: torch.Tensor) -> float:
    """Mean of ‖v‖_p over the real units (tokens, or examples with at least one real token)."""
    units = mask if cfg.level == "token" else mask.amax(dim=-2, keepdim=True)  # (N, T, 1) | (N, 1, 1)
    norms = unit_norm(v.detach() * mask, cfg.norm, cfg.level)
    return float((norms * units).sum() / units.sum().clamp(min=1))


def _skip(cfg: SmartConfig, device: torch.device, embed_norm: float, why: str) -> SmartResult:
    if cfg.strict:
        raise FloatingPointError(f"SMART regulariser: {why}; set smart.strict=false to skip the term instead")
    return _off(device, embed_norm, skipped=True)


# --------------------------------------------------------------------------- divergences by task type


def divergences_for(cfg: SmartConfig, task_type_name: str) -> tuple[Divergence, Divergence]:
    """(ℓ_inner, ℓ_outer) for a task type; "auto" is the type's default (sym_kl or mse)."""
    return (
        _divergence("inner_div", cfg.inner_div, task_type_name),
        _divergence("outer_div", cfg.outer_div, task_type_name),
    )


def _divergence(key: str, choice: str, task_type_name: str) -> Divergence:
    if task_type_name not in TASK_TYPES:
        raise ValueError(f"unknown task type {task_type_name!r}; choose one of {sorted(TASK_TYPES)}")
    name = TASK_TYPES[task_type_name].default_divergence if choice == "auto" else choice
    scores = task_type_name in SCORE_TASK_TYPES
    allowed = DIVERGENCES_FOR_SCORES if scores else DIVERGENCES_FOR_DISTRIBUTIONS
    if name not in allowed:
        kind = "scores (B,)" if scores else "logits of a distribution"
        raise ValueError(
            f"smart.{key}={name} does not fit {task_type_name} tasks, whose outputs are {kind}; "
            f"use auto or one of {allowed}"
        )
    return get_divergence(name)


def warn_if_below_resolution(cfg: SmartConfig, embeds: torch.Tensor) -> bool:
    """Under bf16/fp16 autocast, warn when σ and η are below the spacing of the low-precision
    numbers around x: the encoder's first matrix product rounds x + δ back to x (or to x plus one
    rounding step), so the ascent starts from a zero or rounding-noise gradient and Rs measures
    rounding, not smoothness (docs/gpu.md). Returns whether it checked (once per run is enough)."""
    device_type = embeds.device.type
    if not torch.is_autocast_enabled(device_type) or cfg.dropout == "independent":
        # With independent masks the ascent gradient comes from the dropout difference, and Rs is
        # mostly a dropout-consistency term that rounding does not remove (docs/method.md).
        return False
    dtype = torch.get_autocast_dtype(device_type)
    scale = float(embeds.detach().float().pow(2).mean().sqrt())  # typical |x| per coordinate
    spacing = scale * torch.finfo(dtype).eps  # the low-precision spacing at that magnitude
    if max(cfg.noise_std, cfg.step_size) < spacing:
        log.warning(
            "SMART under %s autocast: σ = %g and η = %g are below the %s spacing (≈ %.1e) of the perturbed tensor "
            "(|x| ≈ %.2g), so the perturbation is rounded away or to noise; use train.precision=fp32 for this "
            "reading (docs/gpu.md)", dtype, cfg.noise_std, cfg.step_size, dtype, spacing, scale,
        )
    return True


# --------------------------------------------------------------------------- the object the loop calls


class SmartRegularizer:
    """Builds f, the mask and the divergences for a batch and counts skipped steps.

    Call it after the clean forward, with x the tensor `smart.input` names, taken from that
    forward: `model.word_embeddings(batch.input_ids)` fed as `inputs_embeds`, or the embedding
    module's output captured during it (`mtsmart.model.captured_embedding_output`); add
    `result.loss` to the task loss before the one backward.
    """

    def __init__(self, cfg: SmartConfig):
        self.cfg = cfg
        self.calls_total = 0  # steps that computed the term
        self.skipped_total = 0  # of those, steps skipped for a non-finite value
        self.warned_resolution = False

    def check_task_types(self, task_type_names: Iterable[str]) -> None:
        """Refuse divergences that do not fit a task type, before training starts."""
        for name in task_type_names:
            divergences_for(self.cfg, name)

    def __call__(
        self,
        model: nn.Module,
        batch: Batch,
        embeds: torch.Tensor,
        clean_output: torch.Tensor,
        task_type_name: str,
        clean_rng: Optional[RngSnapshot] = None,
    ) -> SmartResult:
        """clean_rng: the random state the clean forward started from; with smart.dropout=shared
        every perturbed forward replays it, so f(x̃) and f(x) use the same dropout masks and Rs
        measures the perturbation alone (mtsmart.rng)."""
        if self.cfg.weight == 0:
            return _off(embeds.device)  # λs = 0: nothing to build, nothing to count
        inner, outer = divergences_for(self.cfg, task_type_name)
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

    def state_dict(self) -> dict[str, int]:
        return {"calls_total": self.calls_total, "skipped_total": self.skipped_total}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.calls_total = int(state["calls_total"])
        self.skipped_total = int(state["skipped_total"])
