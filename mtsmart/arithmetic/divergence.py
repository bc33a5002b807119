"""Divergences between two model outputs: the `ℓs` of SMART Eq. (1) and of D_Breg (Eq. 2).

Every function takes `(perturbed, clean)` outputs of identical shape and returns a scalar:
the mean over examples ("batchmean"), so a weight such as λs does not depend on the batch size.
Classification / ranking outputs are logits of shape (B, C); for ranking, B is the number of
query groups and absent candidates hold `MASKED_SCORE`, whose probability is exactly zero.
Regression outputs are scores of shape (B,).

All arithmetic is in float32 from `log_softmax` (no `log(softmax)`, no division by a
probability), so extreme logits give finite values.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

Divergence = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Score given to absent ranking candidates. exp(MASKED_SCORE - max) underflows to exactly 0 in
# float32, while MASKED_SCORE - MASKED_SCORE stays finite, so KL terms of absent slots are 0.
MASKED_SCORE = -1e9


def _check_same_shape(a: torch.Tensor, b: torch.Tensor) -> None:
    # The reference code's regression loss compared (B,) with (B, 1) and silently broadcast to
    # a B×B matrix (docs/method.md "The reference code's defects", 5): refuse mismatched shapes instead.
    if a.shape != b.shape:
        raise ValueError(f"divergence needs outputs of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def kl(perturbed: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """One-sided KL(P_clean ‖ P_perturbed), the virtual-adversarial-training form. (B, C) → ()."""
    _check_same_shape(perturbed, clean)
    log_q = F.log_softmax(perturbed.float(), dim=-1)
    log_p = F.log_softmax(clean.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def symmetric_kl(perturbed: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """KL(P‖Q) + KL(Q‖P) = Σ (p − q)(log p − log q), the paper's ℓs for classification. (B, C) → ()."""
    _check_same_shape(perturbed, clean)
    log_q = F.log_softmax(perturbed.float(), dim=-1)
    log_p = F.log_softmax(clean.float(), dim=-1)
    return ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(-1).mean()


def symmetric_kl_released(perturbed: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Symmetric KL as the released SMART code computes it: KL(sg P̃ ‖ P) + KL(sg P ‖ P̃). (B, C) → ().

    The same value as `symmetric_kl`, another gradient: each side is trained towards the other
    held fixed, so the gradient w.r.t. each side's logits is that of a cross-entropy against the
    other's probabilities (softmax − target); the entropy terms' gradients are absent.
    """
    _check_same_shape(perturbed, clean)
    log_q = F.log_softmax(perturbed.float(), dim=-1)
    log_p = F.log_softmax(clean.float(), dim=-1)
    q_fixed, p_fixed = log_q.detach(), log_p.detach()
    towards_perturbed = (q_fixed.exp() * (q_fixed - log_p)).sum(-1)  # KL(sg P̃ ‖ P): trains the clean side
    towards_clean = (p_fixed.exp() * (p_fixed - log_q)).sum(-1)  # KL(sg P ‖ P̃): trains the perturbed side
    return (towards_perturbed + towards_clean).mean()


def stable_kl(perturbed: torch.Tensor, clean: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The public SMART code's inner "stable_kl" surrogate, offered only for comparison.

    It is not a KL (docs/method.md "The reference code's defects", 8): with the log-odds r(p) = log(p / (1 − p)) taken as
    constants, it returns 2 · Σ_c q_c (r(q_c) − r(p_c)) per example, q the perturbed
    distribution. Its gradient w.r.t. the perturbed logits flows through q only. (B, C) → ().
    """
    _check_same_shape(perturbed, clean)
    q = F.log_softmax(perturbed.float(), dim=-1).exp()
    p = F.log_softmax(clean.float(), dim=-1).exp()

    def log_odds(prob: torch.Tensor) -> torch.Tensor:
        return -torch.log(1.0 / (prob + eps) - 1.0 + eps).detach()

    return (2.0 * q * (log_odds(q) - log_odds(p))).sum(-1).mean()


def squared_error(perturbed: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """(f(x̃) − f(x))², the paper's ℓs for regression, averaged over examples. (B,) → ()."""
    _check_same_shape(perturbed, clean)
    return (perturbed.float() - clean.float()).pow(2).mean()


DIVERGENCES: dict[str, Divergence] = {
    "sym_kl": symmetric_kl,
    "kl": kl,
    "stable_kl": stable_kl,
    "mse": squared_error,
}

# Which divergences make sense for which output kind; others are refused at config time.
DIVERGENCES_FOR_DISTRIBUTIONS = ("sym_kl", "kl", "stable_kl")
DIVERGENCES_FOR_SCORES = ("mse",)


# The released code's criteria by the name of the divergence whose value they compute
# (`smart.outer_gradient=release`): squared error's gradient is already the released one.
RELEASED_GRADIENT: dict[str, Divergence] = {"sym_kl": symmetric_kl_released, "mse": squared_error}


def get_divergence(name: str) -> Divergence:
    if name not in DIVERGENCES:
        raise ValueError(f"unknown divergence {name!r}; choose one of {sorted(DIVERGENCES)}")
    return DIVERGENCES[name]
