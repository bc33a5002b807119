"""Options of multi-task balancing (`mix.*`; docs/method.md "Balancing tasks"): which task each
step trains on, and how much each task's loss counts."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from mtsmart.options.fields import check_field_types

SAMPLING = ("proportional", "temperature", "uniform", "capped", "annealed")
LOSS_SCALES = ("none", "log_classes")
REGRESSION_TARGETS = ("raw", "score_range", "train_stats")


@dataclass
class MixConfig:
    # Which task a step trains on, p_t for a task of n_t training examples: proportional p_t ∝ n_t
    # (MT-DNN); temperature n_t^(1/T); uniform; capped min(n_t, cap)^(1/T) (T5, jiant);
    # annealed n_t^α with α going from 1 to anneal_to over training (BERT and PALs).
    sampling: Literal["proportional", "temperature", "uniform", "capped", "annealed"] = "proportional"
    temperature: float = 2.0  # T of temperature and capped sampling: p_t ∝ (n_t or min(n_t, cap))^(1/T)
    cap: int = 16384  # capped sampling: a task counts as at most this many examples
    anneal_to: float = 0.2  # annealed sampling: the exponent α at the last step (1 at the first; PALs: 0.2)
    loss_weights: dict[str, float] = field(default_factory=dict)  # w_task per task name, overriding its task file's loss_weight, e.g. {stsb: 0.5}
    loss_scale: Literal["none", "log_classes"] = "none"  # log_classes: a C-way task's weight × 1/log C (Muppet); regression × 1
    regression_targets: Literal["raw", "score_range", "train_stats"] = "raw"  # the loss on (y − c)/s: c, s the midpoint and half-width of score_range, or the training labels' mean and std; predictions stay in the task's units

    def __post_init__(self) -> None:
        check_field_types("mix", self)
        if self.sampling not in SAMPLING:
            raise ValueError(f"mix.sampling: {self.sampling!r} is not one of {SAMPLING}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"mix.temperature: {self.temperature!r} must be a finite number > 0")
        if isinstance(self.cap, bool) or not isinstance(self.cap, int) or self.cap < 1:
            raise ValueError(f"mix.cap: {self.cap!r} must be an integer >= 1")
        if not (math.isfinite(self.anneal_to) and 0 <= self.anneal_to <= 1):
            raise ValueError(f"mix.anneal_to: {self.anneal_to!r} must be in [0, 1]")
        for task, weight in self.loss_weights.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (math.isfinite(weight) and weight > 0):
                raise ValueError(f"mix.loss_weights.{task}: {weight!r} must be a finite number > 0")
        if self.loss_scale not in LOSS_SCALES:
            raise ValueError(f"mix.loss_scale: {self.loss_scale!r} is not one of {LOSS_SCALES}")
        if self.regression_targets not in REGRESSION_TARGETS:
            raise ValueError(f"mix.regression_targets: {self.regression_targets!r} is not one of {REGRESSION_TARGETS}")
