"""How smooth and how robust a trained model is around its word embeddings x (the space SMART regularises).

For each radius ε (inf-norm per token, absolute, as `smart.epsilon` with norm=inf, level=token):

- smoothness: the mean over examples of ℓs(f(x + δ), f(x)) — the inner term of Rs, SMART Eq. 1
  (symmetric KL for classification and ranking, squared error for regression) — for
  (i) random δ: each coordinate ±ε with a random sign (a random vertex of the ε-ball, so
  ‖δ‖∞ = ε like the attack's), and (ii) the worst δ a PGD attack finds (Madry et al. 2018):
  a uniform random start in the ball, then K steps δ ← Π_{‖δ‖∞≤ε}(δ + η sign(∇_δ ℓs)), more
  steps than training's K = 1, keeping each example's best δ over the iterates.
- robust accuracy: the task metric when each example's δ is the PGD attack on its task loss.
- confidence: the mean probability of the predicted class (or candidate) on the clean input —
  ℓs is a divergence between output distributions, so a less confident model has a lower ℓs
  whether or not its decisions are harder to flip (docs/results.md, "Smoothness after training").

The model stays in eval mode (no dropout) and its parameters get no gradient: the attack only
differentiates with respect to δ.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from mtsmart.tasks.batch import Batch
from mtsmart.arithmetic.divergence import get_divergence
from mtsmart.components.evaluate import EvalSet, collect, metrics_of
from mtsmart.model.multitask import output_fn
from mtsmart.arithmetic.perturbation import project, steepest_ascent, token_mask, unit_norm
from mtsmart.tasks.types import task_type_of

NORM, LEVEL = "inf", "token"
DEFAULT_RADII = (1e-3, 1e-2, 5e-2)
DEFAULT_ATTACK_STEPS = 10
# Madry et al.'s step: η = 2.5 ε / K lets the iterates reach any point of the ball from any start.
STEP_FACTOR = 2.5

RowFn = Callable[[torch.Tensor], torch.Tensor]  # δ (N, T, H) → per-row values (R,)


def per_row(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """fn (a batch-mean divergence or loss) of each output row alone: (R, ...) → (R,).

    Rows are examples (classification, regression) or query groups (ranking, (G, C) grids).
    """
    return torch.stack([fn(output[i:i + 1], target[i:i + 1]) for i in range(output.shape[0])])


def rows_of_sequences(batch: Batch) -> torch.Tensor:
    """(N,) the output row each encoder sequence feeds: itself, or its query group (ranking)."""
    if batch.candidate_mask is None:
        return torch.arange(batch.num_sequences, device=batch.input_ids.device)
    return torch.div(batch.candidate_slots, batch.candidate_mask.shape[1], rounding_mode="floor")


def random_vertex(x: torch.Tensor, epsilon: float, mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """δ with every real coordinate ±ε, random signs: ‖δ_token‖∞ = ε, zero at padding. (N, T, H)."""
    signs = torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
    return epsilon * signs * mask


def pgd_attack(
    objective: RowFn,
    x: torch.Tensor,
    mask: torch.Tensor,
    rows: torch.Tensor,
    epsilon: float,
    steps: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximise objective(δ) per row over ‖δ_token‖∞ ≤ ε; returns (best δ (N, T, H), its values (R,)).

    rows (N,): the row of `objective`'s output that sequence n affects; a row's sequences keep
    the δ of the iterate that gave the row its largest value.
    """
    step_size = STEP_FACTOR * epsilon / max(steps, 1)
    start = (torch.rand(x.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1) * epsilon
    delta = start * mask
    best_delta = torch.zeros_like(x)
    best = None
    for k in range(steps + 1):
        ascend = k < steps
        delta = delta.detach().requires_grad_(ascend)
        with torch.set_grad_enabled(ascend):
            values = objective(delta)
        improved = torch.ones_like(values, dtype=torch.bool) if best is None else values.detach() > best
        best = values.detach() if best is None else torch.where(improved, values.detach(), best)
        best_delta = torch.where(improved[rows].view(-1, 1, 1), delta.detach(), best_delta)
        if ascend:
            (grad,) = torch.autograd.grad(values.sum(), inputs=delta)
            delta = project(delta.detach() + step_size * steepest_ascent(grad, NORM, LEVEL, mask), epsilon, NORM, LEVEL, mask)
    return best_delta, best


@dataclass
class RadiusResult:
    random: float  # mean ℓs under random ±ε noise
    attack: float  # mean ℓs under the PGD attack on ℓs
    attack_delta_max: float  # largest ‖δ_token‖∞ the attack used (≤ ε)
    robust: dict[str, float]  # task metrics under the PGD attack on the task loss


@dataclass
class SetResult:
    examples: int
    embedding_inf_norm: float  # mean ‖x_token‖∞ over real tokens: the scale ε compares with
    clean: dict[str, float]
    confidence: Optional[float]  # mean clean probability of the prediction; None for regression
    radii: dict[float, RadiusResult]


class _Sums:
    def __init__(self):
        self.random = 0.0
        self.attack = 0.0
        self.delta_max = 0.0
        self.outputs: list[tuple[Batch, torch.Tensor]] = []


def measure_set(
    model: nn.Module,
    eval_set: EvalSet,
    radii: Sequence[float],
    steps: int,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    seed: int = 0,
) -> SetResult:
    """Smoothness and robust metrics of one evaluation set (see the module docstring).

    Leaves the model in eval mode. Means are over output rows: examples, or query groups (ranking).
    """
    spec = eval_set.spec
    task_type = task_type_of(spec)
    divergence = get_divergence(task_type.default_divergence)  # ℓs of Eq. 1 by task type
    generator = torch.Generator(device=device).manual_seed(seed)
    model.eval()
    sums = {eps: _Sums() for eps in radii}
    clean_outputs, rows_total, norm_sum, tokens = [], 0, 0.0, 0.0
    confidence_sum: Optional[float] = None  # stays None for a task type without a distribution
    for batch in eval_set.batches:
        batch = batch.to(device)
        f = output_fn(model, batch)
        x = model.word_embeddings(batch.input_ids).detach()  # (N, T, H)

        def forward(delta: torch.Tensor) -> torch.Tensor:
            with autocast():
                return f(x + delta)

        mask = token_mask(batch.attention_mask, x.dtype)  # (N, T, 1)
        rows = rows_of_sequences(batch)
        with torch.no_grad():
            clean = forward(torch.zeros_like(x)).float()
        clean_outputs.append((batch, clean))
        rows_total += clean.shape[0]
        row_confidence = task_type.confidence(clean)
        if row_confidence is not None:
            confidence_sum = (confidence_sum or 0.0) + float(row_confidence.sum())
        norm_sum += float((unit_norm(x, NORM, LEVEL) * mask).sum())
        tokens += float(mask.sum())

        def smoothness(delta: torch.Tensor) -> torch.Tensor:
            return per_row(divergence, forward(delta), clean)

        def task_loss(delta: torch.Tensor) -> torch.Tensor:
            return per_row(task_type.loss, forward(delta), batch.labels)

        for eps in radii:
            acc = sums[eps]
            with torch.no_grad():
                acc.random += float(smoothness(random_vertex(x, eps, mask, generator)).sum())
            delta, values = pgd_attack(smoothness, x, mask, rows, eps, steps, generator)
            acc.attack += float(values.sum())
            acc.delta_max = max(acc.delta_max, float(unit_norm(delta, NORM, LEVEL).max()))
            delta, _ = pgd_attack(task_loss, x, mask, rows, eps, steps, generator)
            with torch.no_grad():
                acc.outputs.append((batch, forward(delta).float()))
    return SetResult(
        examples=rows_total,
        embedding_inf_norm=norm_sum / max(tokens, 1.0),
        clean=metrics_of(spec, collect(spec, clean_outputs)),
        confidence=None if confidence_sum is None else confidence_sum / rows_total,
        radii={
            eps: RadiusResult(
                random=acc.random / rows_total,
                attack=acc.attack / rows_total,
                attack_delta_max=acc.delta_max,
                robust=metrics_of(spec, collect(spec, acc.outputs)),
            )
            for eps, acc in sums.items()
        },
    )


def measure(
    model: nn.Module,
    eval_sets: Sequence[EvalSet],
    radii: Sequence[float] = DEFAULT_RADII,
    steps: int = DEFAULT_ATTACK_STEPS,
    device: Optional[torch.device] = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    seed: int = 0,
) -> dict[str, SetResult]:
    """{evaluation name: SetResult}; parameters are frozen (requires_grad off) while measuring."""
    if not radii or any(eps <= 0 for eps in radii):
        raise ValueError(f"--radii: give positive radii, got {list(radii)}")
    if steps < 1:
        raise ValueError(f"--attack-steps: {steps} must be at least 1")
    device = device or next(model.parameters()).device
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        return {e.name: measure_set(model, e, radii, steps, device, autocast, seed) for e in eval_sets}
    finally:
        for parameter, flag in zip(model.parameters(), flags):
            parameter.requires_grad_(flag)
