"""Options of the adversarial-training family (`adversarial.*`). See docs/adversarial.md."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

METHODS = ("none", "smart", "fgsm", "fgm", "pgd", "freelb", "gradient_penalty", "r3f", "rdrop")
# The methods the seed articles run on the whole embedding matrix (docs/adversarial.md).
MATRIX_METHODS = ("fgsm", "fgm", "pgd")
# The methods that take gradient-ascent steps under a norm.
NORMED_METHODS = ("fgsm", "fgm", "pgd", "freelb")


@dataclass
class AdversarialConfig:
    # smart: SMART's Rs with the smart.* options; the others with the options below.
    method: Literal["none", "smart", "fgsm", "fgm", "pgd", "freelb", "gradient_penalty", "r3f", "rdrop"] = "smart"
    scope: Literal["example", "matrix"] = "example"  # example: each x_i; matrix: the whole word-embedding matrix (fgsm/fgm/pgd)
    epsilon: float = 1.0  # radius of fgsm/fgm/pgd/freelb; the penalty's ε in L + ½ε‖∇_x L‖²
    step_size: float = 0.3  # η: the PGD / FreeLB ascent step
    steps: int = 3  # PGD / FreeLB ascent steps K
    norm: Literal["auto", "inf", "l2", "l1"] = "auto"  # auto: inf for fgsm (sign step), l2 for fgm/pgd/freelb
    init: Literal["zero", "normal", "uniform"] = "normal"  # FreeLB / R3F random start
    init_scale: float = 1e-5  # std (normal) or half-width (uniform) of the random start
    weight: float = 1.0  # weight of the added term: L(x + r) of fgsm/fgm/pgd, R3F's λ, R-Drop's α, the penalty's multiplier

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"adversarial.method: {self.method!r} is not one of {METHODS}")
        if self.scope not in ("example", "matrix"):
            raise ValueError(f"adversarial.scope: {self.scope!r} is not one of ('example', 'matrix')")
        if self.scope == "matrix" and self.method not in MATRIX_METHODS + ("none",):
            raise ValueError(
                f"adversarial.scope: 'matrix' (perturb the whole embedding matrix, as the seed articles do) "
                f"exists for {MATRIX_METHODS} only, not for method {self.method!r}; use scope: example"
            )
        if self.epsilon <= 0:
            raise ValueError(f"adversarial.epsilon: {self.epsilon} must be positive")
        if self.step_size <= 0:
            raise ValueError(f"adversarial.step_size: {self.step_size} must be positive")
        if self.steps < 1:
            raise ValueError(f"adversarial.steps: {self.steps} must be at least 1 (K ascent steps of pgd/freelb)")
        if self.weight < 0:
            raise ValueError(f"adversarial.weight: {self.weight} must not be negative")
        if self.init_scale < 0:
            raise ValueError(f"adversarial.init_scale: {self.init_scale} must not be negative")
        if self.method == "fgsm" and self.norm not in ("auto", "inf"):
            raise ValueError(
                f"adversarial.norm: fgsm is the sign (inf-norm) step; for norm {self.norm!r} use method fgm"
            )
        if self.method == "r3f" and (self.init == "zero" or self.init_scale == 0):
            raise ValueError(
                "adversarial.init / adversarial.init_scale: r3f needs random noise (init normal or uniform, "
                "init_scale > 0); without it its term is identically zero"
            )

    @property
    def resolved_norm(self) -> str:
        """The norm the ascent uses: `auto` is inf for fgsm (sign step) and l2 otherwise."""
        if self.norm != "auto":
            return self.norm
        return "inf" if self.method == "fgsm" else "l2"
