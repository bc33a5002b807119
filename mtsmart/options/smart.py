"""Options of SMART's smoothness-inducing regulariser Rs (`smart.*`; docs/method.md).

Kept apart from `mtsmart.arithmetic.smart` so that reading a configuration never imports the encoder
libraries.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Literal

from mtsmart.options.fields import check_field_types


# The arithmetic's names (mtsmart.arithmetic.divergence, mtsmart.arithmetic.perturbation; tests/test_architecture.py
# checks they agree), kept here so that options import nothing above them.
DIVERGENCES = ("sym_kl", "kl", "stable_kl", "mse")
NORMS = ("inf", "l2", "l1")
LEVELS = ("token", "example")
UPDATES = ("paper", "reference", "release")
# What x is: the word-embedding output (the paper's text) or the encoder's embedding module output
# after its LayerNorm and dropout (the authors' released code; docs/method.md "Two readings").
INPUTS = ("word_embeddings", "embedding_output")
DROPOUT_MODES = ("shared", "independent")
# How the outer term ℓs(f(x̃), f(x)) trains θ (docs/method.md "Two readings"): the paper's Danskin reading
# (x̃ = x + δ with x in the graph, ℓs differentiated on both sides) or the released code's (x̃ detached, the
# symmetric KL as two one-sided KLs, each with its target detached).
OUTER_GRADIENTS = ("paper", "release")
# The released criteria: symmetric KL (classification, ranking) and squared error (regression).
RELEASED_OUTER_DIVERGENCES = ("auto", "sym_kl", "mse")
DEFAULT_EPSILON = 1e-5
DEFAULT_GUARD = 1e-5


@dataclass
class SmartConfig:
    weight: float = 1.0  # λs; 0 turns Rs off and costs nothing
    steps: int = 1  # K (the paper's T_x̃): ascent steps
    step_size: float = 1e-3  # η
    init_scale: float = 1e-5  # σ of the random start ν ~ N(0, σ² I) (the paper's noise)
    epsilon: float = DEFAULT_EPSILON  # ε: the projection radius ‖x̃ − x‖_p ≤ ε of update=paper (the reference and release rules have none)
    guard: float = DEFAULT_GUARD  # the division guard of g/(‖g‖ + guard) in update=reference and release (update=paper normalises without one)
    epsilon_relative: bool = False  # ε relative to each unit's embedding norm (docs/method.md "The radius")
    norm: Literal["inf", "l2", "l1"] = "inf"  # p of the ball ‖x̃ − x‖_p ≤ ε and of the ascent normalisation
    level: Literal["token", "example"] = "token"  # perturbation unit: each token (H) or each example (T×H)
    inner_div: Literal["auto", "sym_kl", "kl", "stable_kl", "mse"] = "auto"  # auto: by task type
    outer_div: Literal["auto", "sym_kl", "kl", "stable_kl", "mse"] = "auto"  # the ℓs that trains θ; auto: by task type
    update: Literal["paper", "reference", "release"] = "paper"  # paper: Algorithm 1; reference: the public code's unit-norm rule; release: x + η·g/‖g‖ as the authors ran it
    input: Literal["word_embeddings", "embedding_output"] = "word_embeddings"  # the perturbed tensor x: word embeddings (the paper's text) or the embedding module's output (the released code)
    strict: bool = False  # raise on a non-finite ascent gradient instead of skipping the term
    dropout: Literal["shared", "independent"] = "shared"  # perturbed forwards reuse the clean forward's dropout masks, or draw new ones (the reference code)
    outer_gradient: Literal["paper", "release"] = "paper"  # paper: x̃ = x + δ in the graph, ℓs differentiated on both sides; release: x̃ detached, ℓs's gradient as the released criterion

    def __post_init__(self) -> None:
        check_field_types("smart", self)
        for key in ("weight", "step_size", "init_scale", "epsilon", "guard"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"smart.{key} must be a finite number >= 0, got {value!r}")
        if self.steps < 0:
            raise ValueError(f"smart.steps must be >= 0, got {self.steps!r}")
        _check_choice("norm", self.norm, NORMS)
        _check_choice("level", self.level, LEVELS)
        _check_choice("update", self.update, UPDATES)
        _check_choice("input", self.input, INPUTS)
        _check_choice("dropout", self.dropout, DROPOUT_MODES)
        _check_choice("outer_gradient", self.outer_gradient, OUTER_GRADIENTS)
        _check_choice("inner_div", self.inner_div, ("auto", *DIVERGENCES))
        _check_choice("outer_div", self.outer_div, ("auto", *DIVERGENCES))
        if self.update != "paper" and self.epsilon != DEFAULT_EPSILON:
            raise ValueError(
                f"smart.epsilon is the projection radius of smart.update=paper; smart.update={self.update} has no radius "
                "(its division guard is smart.guard)"
            )
        if self.update == "paper" and self.guard != DEFAULT_GUARD:
            raise ValueError("smart.guard is the division guard of smart.update=reference and release; "
                             "smart.update=paper has none (its radius is smart.epsilon)")
        if self.outer_gradient == "release" and self.outer_div not in RELEASED_OUTER_DIVERGENCES:
            raise ValueError(f"smart.outer_gradient=release is the gradient of the released criteria {RELEASED_OUTER_DIVERGENCES[1:]}; "
                             f"smart.outer_div={self.outer_div} has none (use smart.outer_gradient=paper)")
        if self.update != "paper" and self.epsilon_relative:
            # The reference and release rules have no radius (ε is only their denominator guard),
            # so a relative radius would be parsed and ignored: refuse it.
            raise ValueError(f"smart.epsilon_relative=true has no meaning with smart.update={self.update} (no projection radius)")


def _check_choice(key: str, value: str, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"smart.{key} must be one of {choices}, got {value!r}")
