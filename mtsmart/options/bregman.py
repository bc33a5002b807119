"""Options of the momentum Bregman proximal point term (`bregman.*`; docs/bregman.md).

Kept apart from `mtsmart.regularisers.bregman` so that reading a configuration never imports the encoder
libraries.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mtsmart.options.fields import check_field_types

# two_phase: β = early_beta for the first early_fraction of the updates, then `beta`. The paper's
# 0.99 over 10% by default; the authors' code ran 0.9 over the warm-up, then 0.99 (docs/method.md "Two readings").
SCHEDULES = ("two_phase", "constant")

@dataclass
class BregmanConfig:
    mu: float = 1.0  # μ; 0 turns the term off and costs nothing
    beta: float = 0.999  # β of θ̃ = (1 − β) θ + β θ̃ (schedule=constant, and after the switch)
    beta_schedule: Literal["two_phase", "constant"] = "two_phase"  # two_phase: early_beta for the first early_fraction of updates, then beta
    early_beta: float = 0.99  # β of the early phase (the paper: 0.99; the authors' code: 0.9, docs/method.md "Two readings")
    early_fraction: float = 0.1  # length of the early phase as a fraction of all updates (the paper: 10%; the authors' code: the warm-up)
    inner_steps: int = 1  # S: optimizer steps between teacher updates
    teacher_dropout: bool = False  # teacher forward in train mode (dropout on) or eval mode
    divergence: Literal["auto", "sym_kl", "kl", "stable_kl", "mse"] = "auto"  # ℓs of D_Breg; auto: by task type

    def __post_init__(self) -> None:
        check_field_types("bregman", self)
        if not self.mu >= 0.0:
            raise ValueError(f"bregman.mu: {self.mu} must be >= 0")
        if not 0.0 <= self.beta < 1.0:
            raise ValueError(f"bregman.beta: {self.beta} must be in [0, 1) (1 would freeze the teacher)")
        if self.beta_schedule == "paper":
            raise ValueError("bregman.beta_schedule: 'paper' is now called 'two_phase' (early_beta 0.99 over early_fraction 0.1)")
        if self.beta_schedule not in SCHEDULES:
            raise ValueError(f"bregman.beta_schedule: {self.beta_schedule!r} is not one of {list(SCHEDULES)}")
        if not 0.0 <= self.early_beta < 1.0:
            raise ValueError(f"bregman.early_beta: {self.early_beta} must be in [0, 1)")
        if not 0.0 <= self.early_fraction <= 1.0:
            raise ValueError(f"bregman.early_fraction: {self.early_fraction} must be in [0, 1]")
        if self.inner_steps < 1:
            raise ValueError(f"bregman.inner_steps: {self.inner_steps} must be >= 1")
        if self.divergence not in ("auto", "sym_kl", "kl", "stable_kl", "mse"):
            raise ValueError(
                f"bregman.divergence: {self.divergence!r} is not one of ['auto', 'sym_kl', 'kl', 'stable_kl', 'mse']"
            )


