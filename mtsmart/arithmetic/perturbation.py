"""Norms, normalisation and projection of embedding perturbations δ = x̃ − x.

Shapes: δ, g and `mask` broadcast as (B, T, H) and (B, T, 1). A perturbation *unit* is one token
(level "token": the norm is over H) or one example (level "example": the norm is over T×H).
Padding positions (mask 0) are never perturbed: every function here returns exact zeros there.

`radius` is a float or a tensor of per-unit radii shaped like `unit_norm(...)` returns, so ε may
be absolute or relative to each unit's embedding norm (docs/method.md "The radius").
"""
from __future__ import annotations

from typing import Literal, Union

import torch

Norm = Literal["inf", "l2", "l1"]
Level = Literal["token", "example"]
NORMS = ("inf", "l2", "l1")
LEVELS = ("token", "example")
Radius = Union[float, torch.Tensor]

# Guards a division by the norm of an all-zero unit (padding, or a vanishing gradient).
_TINY = 1e-12


def _unit_dims(level: str) -> tuple[int, ...]:
    if level == "token":
        return (-1,)
    if level == "example":
        return (-2, -1)
    raise ValueError(f"unknown perturbation level {level!r}; choose one of {LEVELS}")


def unit_norm(v: torch.Tensor, norm: str, level: str) -> torch.Tensor:
    """‖v‖_p per unit, kept as broadcastable dims: (B, T, 1) for tokens, (B, 1, 1) for examples."""
    dims = _unit_dims(level)
    if norm == "inf":
        return v.abs().amax(dim=dims, keepdim=True)
    if norm == "l2":
        return v.pow(2).sum(dim=dims, keepdim=True).sqrt()
    if norm == "l1":
        return v.abs().sum(dim=dims, keepdim=True)
    raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")


def normalize(g: torch.Tensor, norm: str, level: str, mask: torch.Tensor) -> torch.Tensor:
    """g̃ = g / ‖g‖_p per unit (Algorithm 1's normalised ascent direction), zero at padding."""
    g = g * mask
    return g / (unit_norm(g, norm, level) + _TINY)


def steepest_ascent(g: torch.Tensor, norm: str, level: str, mask: torch.Tensor) -> torch.Tensor:
    """The unit-norm direction d maximising ⟨g, d⟩ under ‖d‖_p ≤ 1 (FGSM/FGM/PGD step).

    inf → sign(g) (FGSM), l2 → g/‖g‖₂ (FGM), l1 → all mass on the largest |g| coordinate.
    """
    g = g * mask
    if norm == "inf":
        return torch.sign(g)
    if norm == "l2":
        return g / (unit_norm(g, "l2", level) + _TINY)
    if norm == "l1":
        flat = g.flatten(start_dim=-2) if level == "example" else g
        top = flat.abs().argmax(dim=-1, keepdim=True)
        d = torch.zeros_like(flat).scatter_(-1, top, 1.0) * torch.sign(flat)
        return d.view_as(g)
    raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")


def project(delta: torch.Tensor, radius: Radius, norm: str, level: str, mask: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each unit of δ onto the ball ‖δ‖_p ≤ radius, zero at padding.

    inf: clamp each coordinate; l2: rescale units outside the ball; l1: the sort-based
    projection of Duchi et al. (ICML 2008), i.e. soft-thresholding at the level that puts the
    unit exactly on the sphere.
    """
    delta = delta * mask
    radius_t = torch.as_tensor(radius, dtype=delta.dtype, device=delta.device)
    if norm == "inf":
        # Broadcast the per-unit radius over the unit's coordinates.
        return torch.maximum(torch.minimum(delta, radius_t), -radius_t) * mask
    if norm == "l2":
        scale = torch.clamp(radius_t / (unit_norm(delta, "l2", level) + _TINY), max=1.0)
        return delta * scale
    if norm == "l1":
        return _project_l1(delta, radius_t, level) * mask
    raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")


def _project_l1(delta: torch.Tensor, radius: torch.Tensor, level: str) -> torch.Tensor:
    """Duchi et al. (2008), Fig. 1, vectorised over units: returns sign(v)·max(|v| − θ, 0)."""
    shape = delta.shape
    flat = delta.flatten(start_dim=-2) if level == "example" else delta  # (..., n)
    if level == "example" and radius.dim() > 0:
        radius = radius.flatten(start_dim=-2)  # (B, 1, 1) -> (B, 1)
    radius = radius.expand(*flat.shape[:-1], 1)
    # The threshold in float64: a float32 cumulative sum over thousands of coordinates drifts
    # enough to overshoot the radius by ~1e-4 relative when ‖δ‖₁ ≫ radius.
    magnitude = flat.abs().double()
    radius = radius.double()
    inside = magnitude.sum(-1, keepdim=True) <= radius
    sorted_mag, _ = magnitude.sort(dim=-1, descending=True)
    cumulative = sorted_mag.cumsum(dim=-1)
    index = torch.arange(1, flat.shape[-1] + 1, device=flat.device, dtype=torch.float64)
    # ρ = the largest j with u_j − (Σ_{r≤j} u_r − z)/j > 0; θ = (Σ_{r≤ρ} u_r − z)/ρ.
    positive = sorted_mag - (cumulative - radius) / index > 0
    rho = positive.double().cumsum(-1).argmax(-1, keepdim=True)  # last True position
    theta = (cumulative.gather(-1, rho) - radius) / (rho + 1).double()
    projected = (torch.sign(flat) * torch.clamp(magnitude - theta, min=0.0)).to(flat.dtype)
    return torch.where(inside, flat, projected).view(shape)


def token_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) attention mask → (B, T, 1) float mask of the positions that may be perturbed."""
    return attention_mask.unsqueeze(-1).to(dtype)


def unit_radius(embeds: torch.Tensor, epsilon: float, relative: bool, norm: str, level: str) -> Radius:
    """ε itself, or ε · ‖x‖_p of each unit's own embedding when ε is relative (docs/method.md "The radius")."""
    if not relative:
        return epsilon
    return epsilon * unit_norm(embeds.detach(), norm, level)
