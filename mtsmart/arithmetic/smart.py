"""SMART smoothness-inducing adversarial regulariser Rs (Jiang et al. 2020, Eq. 1, Algorithm 1).

    Rs(θ) = 1/n Σ_i  max_{‖x̃_i − x_i‖_p ≤ ε}  ℓs( f(x̃_i; θ), f(x_i; θ) )

x is the tensor `smart.input` names (docs/method.md "What x is"): the word-embedding output
(N, T, H), fed back as `inputs_embeds` so position/type embeddings are not applied twice, or the
embedding module's output. Two layers, as in composer:

- `smart_regularizer(...)` here: the pure function, one call per training step;
- `mtsmart.regularisers.smart_method.SmartRegularizer(cfg)`: `adversarial.method=smart` behind
  the regulariser interface; it builds f for a batch, picks the task type's divergences and
  counts skipped steps (checkpointed).

Cost per step with K ascent steps: the clean forward is the loop's (shared with the task loss);
then K × (forward of x + δ, backward to δ only) and 1 × (forward of x + δ with the loss's
backward into θ). Nothing else: no extra clean forward and no parameter gradient in the ascent.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from mtsmart.arithmetic.divergence import Divergence
from mtsmart.arithmetic.perturbation import Radius, normalize, project, unit_norm, unit_radius
from mtsmart.options.smart import SmartConfig

log = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], torch.Tensor]  # embeddings (N, T, H) → task output


class _NonFinite(Exception):
    """An ascent step met a non-finite divergence or gradient; the message says at which step."""


@dataclass
class SmartResult:
    loss: torch.Tensor  # λs · Rs, scalar, to add to the task loss; a zero tensor without graph if skipped/off
    rs: float  # Rs (unweighted) of this step; 0.0 when skipped or off
    delta_norm: float  # mean over real units of ‖δ‖_p; 0.0 when skipped or off
    embed_norm: float  # mean over real units of ‖x‖_p, to compare with delta_norm and ε
    skipped: bool  # True if a non-finite value made this step skip the term


def off_result(device: torch.device, embed_norm: float = 0.0, skipped: bool = False) -> SmartResult:
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

    forward: embeddings (N, T, H) → task output, e.g. `mtsmart.model.multitask.output_fn(model, batch)`.
    embeds: x (N, T, H), the word-embedding output, part of the parameters' autograd graph.
    clean_output: f(x; θ) from the loop's clean forward (shared with the task loss; not
        recomputed here). Gradient flows into θ through it and, with smart.outer_gradient=paper,
        through x (Danskin: only δ is held fixed); with release, x̃ is detached.
    mask: (N, T, 1), 1 at real tokens (`perturbation.token_mask`); padding is never perturbed.
    generator: draws the initial noise ν; None uses the global RNG.
    """
    if cfg.weight == 0:
        return off_result(embeds.device)  # λs = 0: plain fine-tuning, no forward or backward
    # The ascent in float32 whatever dtype x arrives in (a tensor captured under autocast may be
    # half precision): a bf16 δ would round η·g̃ away and normalise g in 8 bits.
    x = embeds.detach().float()
    embed_norm = _mean_unit_norm(x, cfg, mask)
    radius = unit_radius(x, cfg.epsilon, cfg.epsilon_relative, cfg.norm, cfg.level)
    noise = _initial_noise(x, cfg.init_scale, mask, generator)  # ν ~ N(0, σ² I)
    target = clean_output.detach()  # f(x) is a constant of the inner maximisation
    ascend = _release_ascent if cfg.update == "release" else _iterate_ascent
    try:
        delta = ascend(forward, x, noise, target, inner_div, radius, cfg, mask)
    except _NonFinite as stop:
        return _skip(cfg, embeds.device, embed_norm, str(stop))
    # Outer term with δ held fixed. paper (Danskin): x̃ = x + δ, x and f(x) stay in θ's graph;
    # release: x̃ detached, so θ is trained through f(x̃)'s layers and f(x), not through x̃'s input.
    perturbed = embeds + delta if cfg.outer_gradient == "paper" else (embeds.detach() + delta).detach()
    rs = outer_div(forward(perturbed), clean_output)
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


def _iterate_ascent(forward: Forward, x: torch.Tensor, noise: torch.Tensor, target: torch.Tensor, inner_div: Divergence,
                    radius: Radius, cfg: SmartConfig, mask: torch.Tensor) -> torch.Tensor:
    """δ after K steps of the paper's (or the reference code's) rule from δ₀ = ν."""
    delta = noise
    if cfg.steps == 0 and cfg.update == "paper":
        delta = project(delta, radius, cfg.norm, cfg.level, mask)  # so ‖δ‖_p ≤ ε holds with K = 0 too
    for step in range(cfg.steps):
        grad = _finite_ascent_gradient(forward, x, delta, target, inner_div, step)
        delta = _update(delta, grad, radius, cfg, mask)
    return delta


def _release_ascent(forward: Forward, x: torch.Tensor, noise: torch.Tensor, target: torch.Tensor, inner_div: Divergence,
                    radius: Radius, cfg: SmartConfig, mask: torch.Tensor) -> torch.Tensor:
    """δ = Σ_k η · g_k / (‖g_k‖ + guard) per unit, as the authors' released code accumulates it
    (docs/method.md "Two readings"): g_k is taken at x + ν + Σ_{j<k} η·ĝ_j, and the noise ν only
    seeds the gradients — it is not in x̃. No projection. K = 1 gives δ = η · g₁ / (‖g₁‖ + guard)."""
    pushed = torch.zeros_like(x)
    for step in range(cfg.steps):
        grad = _finite_ascent_gradient(forward, x, noise + pushed, target, inner_div, step) * mask
        pushed = pushed + cfg.step_size * grad / (unit_norm(grad, cfg.norm, cfg.level) + cfg.guard)
    return pushed


def _finite_ascent_gradient(forward: Forward, x: torch.Tensor, delta: torch.Tensor, target: torch.Tensor,
                            inner_div: Divergence, step: int) -> torch.Tensor:
    """g = ∇_δ ℓ_inner(f(x + δ), f(x)) of ascent step `step` (from 0); raises _NonFinite if ℓ or g is not finite."""
    inner, grad = _ascent_gradient(forward, x, delta, target, inner_div)
    if not bool(torch.isfinite(inner) & torch.isfinite(grad).all()):  # one host sync per step
        raise _NonFinite(f"non-finite inner divergence or ascent gradient at step {step + 1}")
    return grad


def _update(delta: torch.Tensor, grad: torch.Tensor, radius: Radius, cfg: SmartConfig, mask: torch.Tensor) -> torch.Tensor:
    """One step of the paper's or the reference code's rule; returns the new δ (N, T, H), detached."""
    delta = delta.detach()
    if cfg.update == "paper":
        # Algorithm 1: g̃ = g / ‖g‖; x̃ ← Π_{‖x̃ − x‖_p ≤ ε}(x̃ + η g̃).
        ascended = delta + cfg.step_size * normalize(grad, cfg.norm, cfg.level, mask)
        return project(ascended, radius, cfg.norm, cfg.level, mask)
    # The public code's rule (docs/method.md "The reference code's defects", 3), for comparison only: δ ← (δ + η g) scaled
    # to unit norm per unit, a mere guard in the denominator, so ‖δ‖_p ≈ 1 (the paper's ε plays no part).
    ascended = (delta + cfg.step_size * grad) * mask
    return ascended / (unit_norm(ascended, cfg.norm, cfg.level) + cfg.guard)


def _mean_unit_norm(v: torch.Tensor, cfg: SmartConfig, mask: torch.Tensor) -> float:
    """Mean of ‖v‖_p over the real units (tokens, or examples with at least one real token)."""
    units = mask if cfg.level == "token" else mask.amax(dim=-2, keepdim=True)  # (N, T, 1) | (N, 1, 1)
    norms = unit_norm(v.detach() * mask, cfg.norm, cfg.level)
    return float((norms * units).sum() / units.sum().clamp(min=1))


def _skip(cfg: SmartConfig, device: torch.device, embed_norm: float, why: str) -> SmartResult:
    if cfg.strict:
        raise FloatingPointError(f"SMART regulariser: {why}; set smart.strict=false to skip the term instead")
    return off_result(device, embed_norm, skipped=True)


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
    if max(cfg.init_scale, cfg.step_size) < spacing:
        log.warning(
            "SMART under %s autocast: σ = %g and η = %g are below the %s spacing (≈ %.1e) of the perturbed tensor "
            "(|x| ≈ %.2g), so the perturbation is rounded away or to noise; use train.precision=fp32 for this "
            "reading (docs/gpu.md)", dtype, cfg.init_scale, cfg.step_size, dtype, spacing, scale,
        )
    return True
