"""SMART smoothness-inducing adversarial regulariser Rs (Jiang et al. 2020, Eq. 1, Algorithm 1)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class SmartConfig:
    weight: float = 1.0  # λs; 0 turns Rs off and costs nothing
    steps: int = 1  # K (the paper's T_x̃): ascent steps
    step_size: float = 1e-3  # η
    noise_std: float = 1e-5  # σ of the initial noise ν ~ N(0, σ² I)
    epsilon: float = 1e-5  # ε, the projection radius
    epsilon_relative: bool = False  # ε relative to each unit's embedding norm (SMART.md §6)
    norm: Literal["inf", "l2", "l1"] = "inf"
    level: Literal["token", "sentence"] = "token"
    inner_div: Literal["auto", "sym_kl", "kl", "stable_kl", "mse"] = "auto"  # auto: by task type
    outer_div: Literal["auto", "sym_kl", "kl", "stable_kl", "mse"] = "auto"
    update: Literal["paper", "reference"] = "paper"
    strict: bool = False  # raise on a non-finite ascent gradient instead of skipping the term
