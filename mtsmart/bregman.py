"""Momentum Bregman proximal point optimisation (Jiang et al. 2020, Eq. 2-3) as an optimizer wrapper."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class BregmanConfig:
    mu: float = 1.0  # μ; 0 turns the term off and costs nothing
    beta: float = 0.999  # β of θ̃ = (1 − β) θ + β θ̃ (schedule=constant, and after the switch)
    beta_schedule: Literal["paper", "constant"] = "paper"  # paper: 0.99 for the first 10% of updates
    inner_steps: int = 1  # S: optimizer steps between teacher updates
    teacher_dropout: bool = False  # teacher forward in train mode (dropout on) or eval mode
    divergence: Literal["auto", "sym_kl", "kl", "stable_kl", "mse"] = "auto"
