"""Options of the adversarial-training family (`adversarial.*`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

METHODS = ("none", "smart", "fgsm", "fgm", "pgd", "freelb", "gradient_penalty", "r3f")


@dataclass
class AdversarialConfig:
    # smart: SMART's Rs with the smart.* options; the others with the options below.
    method: Literal["none", "smart", "fgsm", "fgm", "pgd", "freelb", "gradient_penalty", "r3f"] = "smart"
    scope: Literal["example", "matrix"] = "example"
    epsilon: float = 1.0
    alpha: float = 0.3  # PGD / FreeLB step size
    steps: int = 3  # PGD / FreeLB ascent steps K
    norm: Literal["inf", "l2", "l1"] = "l2"
    init: Literal["zero", "normal", "uniform"] = "normal"  # FreeLB / R3F random start
    init_scale: float = 1e-5  # std (normal) or half-width (uniform) of the random start
    weight: float = 1.0  # weight of the adversarial term (R3F's λ, the penalty's multiplier)
