"""Options of the regularisers: `adversarial.method` chooses one; each method has its own section,
named as in its paper (`fgsm.*`, `fgm.*`, `pgd.*`, `freelb.*`, `gradient_penalty.*`, `r3f.*`,
`rdrop.*`; SMART's Rs is `smart.*`, mtsmart.options.smart). docs/adversarial.md.

Every key has one meaning: a section configures its own method and nothing else.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from mtsmart.options.fields import check_field_types

METHODS = ("none", "smart", "fgsm", "fgm", "pgd", "freelb", "gradient_penalty", "r3f", "rdrop")
SCOPES = ("example", "matrix")
STARTS = ("zero", "normal", "uniform")


def _check(section: str, name: str, value: float, *, positive: bool = False) -> None:
    """A finite number, > 0 (positive) or >= 0; the message names `section.name`."""
    ok = math.isfinite(value) and (value > 0 if positive else value >= 0)
    if not ok:
        raise ValueError(f"{section}.{name}: {value!r} must be a finite number {'> 0' if positive else '>= 0'}")


def _check_choice(section: str, name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{section}.{name}: {value!r} is not one of {choices}")


@dataclass
class AdversarialConfig:
    # The regulariser: none (plain fine-tuning), smart (Rs, smart.*), or one of the family, each
    # configured in the section of its name.
    method: Literal["none", "smart", "fgsm", "fgm", "pgd", "freelb", "gradient_penalty", "r3f", "rdrop"] = "smart"

    def __post_init__(self) -> None:
        check_field_types("adversarial", self)
        _check_choice("adversarial", "method", self.method, METHODS)


@dataclass
class FGSMConfig:
    """FGSM (Goodfellow 2015): r = ε · sign(∇_x L); trains L(x) + weight · L(x + r)."""

    epsilon: float = 1.0  # ε: the size of the sign step
    weight: float = 1.0  # weight of L(x + r, y)
    scope: Literal["example", "matrix"] = "example"  # example: each x_i; matrix: the whole word-embedding matrix, as the seed articles do

    def __post_init__(self) -> None:
        check_field_types("fgsm", self)
        _check("fgsm", "epsilon", self.epsilon, positive=True)
        _check("fgsm", "weight", self.weight)
        _check_choice("fgsm", "scope", self.scope, SCOPES)


@dataclass
class FGMConfig:
    """FGM (Miyato 2017): r = ε · g/‖g‖, g = ∇_x L; trains L(x) + weight · L(x + r)."""

    epsilon: float = 1.0  # ε: the length of the step
    norm: Literal["l2", "inf", "l1"] = "l2"  # the norm of g/‖g‖ (inf: the sign step)
    weight: float = 1.0  # weight of L(x + r, y)
    scope: Literal["example", "matrix"] = "example"  # example: each x_i; matrix: the whole word-embedding matrix

    def __post_init__(self) -> None:
        check_field_types("fgm", self)
        _check("fgm", "epsilon", self.epsilon, positive=True)
        _check("fgm", "weight", self.weight)
        _check_choice("fgm", "norm", self.norm, ("l2", "inf", "l1"))
        _check_choice("fgm", "scope", self.scope, SCOPES)


@dataclass
class PGDConfig:
    """PGD (Madry 2018): K projected ascent steps r ← Π_{‖r‖≤ε}(r + η g/‖g‖) from r = 0; trains
    L(x) + weight · L(x + r_K)."""

    epsilon: float = 1.0  # ε: the radius of the ball
    step_size: float = 0.3  # η (the seed articles' α)
    steps: int = 3  # K
    norm: Literal["l2", "inf", "l1"] = "l2"  # the norm of the ball and of g/‖g‖
    weight: float = 1.0  # weight of L(x + r_K, y)
    scope: Literal["example", "matrix"] = "example"  # example: each x_i; matrix: the whole word-embedding matrix

    def __post_init__(self) -> None:
        check_field_types("pgd", self)
        _check("pgd", "epsilon", self.epsilon, positive=True)
        _check("pgd", "step_size", self.step_size, positive=True)
        _check("pgd", "weight", self.weight)
        if self.steps < 1:
            raise ValueError(f"pgd.steps: {self.steps!r} must be at least 1")
        _check_choice("pgd", "norm", self.norm, ("l2", "inf", "l1"))
        _check_choice("pgd", "scope", self.scope, SCOPES)


@dataclass
class FreeLBConfig:
    """FreeLB (Zhu 2020, Algorithm 1): K ascent steps from a random start in the ε-ball; θ trains
    on the mean of the K perturbed losses."""

    epsilon: float = 1.0  # ε: the radius of the ball
    step_size: float = 0.3  # η (FreeLB's α)
    steps: int = 3  # K
    norm: Literal["l2", "inf", "l1"] = "l2"  # the norm of the ball and of g/‖g‖
    init: Literal["zero", "normal", "uniform"] = "normal"  # the random start δ_0
    init_scale: float = 1e-5  # std (normal) or half-width (uniform) of δ_0

    def __post_init__(self) -> None:
        check_field_types("freelb", self)
        _check("freelb", "epsilon", self.epsilon, positive=True)
        _check("freelb", "step_size", self.step_size, positive=True)
        _check("freelb", "init_scale", self.init_scale)
        if self.steps < 1:
            raise ValueError(f"freelb.steps: {self.steps!r} must be at least 1")
        _check_choice("freelb", "norm", self.norm, ("l2", "inf", "l1"))
        _check_choice("freelb", "init", self.init, STARTS)


@dataclass
class GradientPenaltyConfig:
    """The gradient penalty (Su 2020): L + weight · ½ ε ‖∇_x L‖²."""

    epsilon: float = 1.0  # ε of ½ ε ‖∇_x L‖² (the step the penalty expands)
    weight: float = 1.0  # multiplier of the penalty

    def __post_init__(self) -> None:
        check_field_types("gradient_penalty", self)
        _check("gradient_penalty", "epsilon", self.epsilon, positive=True)
        _check("gradient_penalty", "weight", self.weight)


@dataclass
class R3FConfig:
    """R3F (Aghajanyan 2021): L + λ · ℓs(f(x + r), f(x)), r random, no ascent."""

    init: Literal["normal", "uniform"] = "normal"  # the distribution of r
    init_scale: float = 1e-5  # σ: std (normal) or half-width (uniform) of r
    weight: float = 1.0  # λ

    def __post_init__(self) -> None:
        check_field_types("r3f", self)
        _check_choice("r3f", "init", self.init, ("normal", "uniform"))
        _check("r3f", "init_scale", self.init_scale, positive=True)  # r = 0 would make the term identically zero
        _check("r3f", "weight", self.weight)


@dataclass
class RDropConfig:
    """R-Drop (Liang 2021): the task loss of two dropout samples plus α times their disagreement."""

    alpha: float = 1.0  # α

    def __post_init__(self) -> None:
        check_field_types("rdrop", self)
        _check("rdrop", "alpha", self.alpha)


def method_options_classes() -> dict[str, type | None]:
    """`adversarial.method` → the dataclass of its section (None: plain fine-tuning has no options)."""
    from mtsmart.options.smart import SmartConfig

    return {"none": None, "smart": SmartConfig, "fgsm": FGSMConfig, "fgm": FGMConfig, "pgd": PGDConfig,
            "freelb": FreeLBConfig, "gradient_penalty": GradientPenaltyConfig, "r3f": R3FConfig, "rdrop": RDropConfig}
