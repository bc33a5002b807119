"""The three task types as code: each owns what depends on the type — its head's width, output
shape, loss, default and allowed divergences, labels (classes or scores), whether examples come in
query groups, prediction, and what its metrics read. Everything else asks the type
(`task_type_of(spec)`), never compares `spec.type` with a name.

Outputs ("task outputs") by type:
- classification: logits (B, C);
- regression: scores (B,);
- ranking: scores (G, C) of each query group's candidates, absent slots at MASKED_SCORE, so a
  softmax over the last dim is the distribution over a group's candidates (the reference code
  reshaped only one side, docs/method.md "The reference code's defects"; here every consumer sees the grouped form).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtsmart.tasks.batch import Batch
from mtsmart.arithmetic.divergence import DIVERGENCES_FOR_DISTRIBUTIONS, DIVERGENCES_FOR_SCORES, MASKED_SCORE
from mtsmart.arithmetic.metrics import Predictions

if TYPE_CHECKING:  # task_spec imports this module to check a task file's type
    from mtsmart.tasks.spec import TaskSpec


class Head(nn.Module):
    """Dropout + linear layer on the first token's final hidden state."""

    def __init__(self, hidden_size: int, num_outputs: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(hidden_size, num_outputs)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:  # (N, H) -> (N, num_outputs)
        return self.proj(self.dropout(pooled))


class TaskType:
    name: str = ""
    default_divergence: str = "sym_kl"  # ℓs of SMART, D_Breg, R3F and R-Drop unless a key says otherwise
    divergences: tuple[str, ...] = DIVERGENCES_FOR_DISTRIBUTIONS  # the ℓs that apply to its outputs
    outputs: str = "logits of a distribution"
    scores: bool = False  # labels are real-valued scores (not class names)
    grouped: bool = False  # examples come in query groups of candidates, one output row per group

    def num_outputs(self, labels: Sequence[str]) -> int:
        """Width of the head: one logit per class, or one score per sequence."""
        return 1

    def check_labels(self, labels: Sequence[str], positive_label: Optional[str]) -> Optional[str]:
        """What is wrong with a task file's labels for this type (None: nothing)."""
        return None

    def divergence(self, key: str, choice: str) -> str:
        """The divergence a config key (`smart.inner_div`, `bregman.divergence`, ...) selects for
        this type's tasks: `auto` is the type's default; one that does not fit is refused."""
        name = self.default_divergence if choice == "auto" else choice
        if name not in self.divergences:
            raise ValueError(
                f"{key}={name} does not fit {self.name} tasks, whose outputs are {self.outputs}; "
                f"use auto or one of {self.divergences}"
            )
        return name

    def make_head(self, hidden_size: int, spec: "TaskSpec") -> Head:
        return Head(hidden_size, spec.num_outputs, spec.dropout)

    def task_output(self, head_output: torch.Tensor, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, outputs: np.ndarray) -> np.ndarray:
        """Outputs (in dataset order) → predictions: class ids, scores, or each group's chosen candidate."""
        raise NotImplementedError

    def metric_inputs(self, gold: np.ndarray, outputs: np.ndarray, mask: Optional[np.ndarray]) -> Predictions:
        """What mtsmart.arithmetic.metrics reads for this type."""
        return Predictions(gold=gold, pred=self.predict(outputs))

    def confidence(self, output: torch.Tensor) -> Optional[torch.Tensor]:
        """Each output row's probability of its predicted class or candidate (R,), or None where
        the outputs are not a distribution (regression). A KL between outputs, ℓs, shrinks with it."""
        return torch.softmax(output.float(), dim=-1).max(dim=-1).values  # masked candidates: ≈ 0

    def classes(self, spec: "TaskSpec") -> Optional[int]:
        """C of a C-way choice between classes (Muppet's loss scale 1/log C), or None."""
        return None

    def loss_target(self, labels: np.ndarray, spec: "TaskSpec") -> np.ndarray:
        """Labels in the units the loss works in: as they are, but for regression's standardised scores."""
        return labels

    def to_task_units(self, outputs: np.ndarray, spec: "TaskSpec") -> np.ndarray:
        """Raw outputs in the task's own units (the inverse of `loss_target` for regression)."""
        return outputs


class Classification(TaskType):
    name = "classification"
    default_divergence = "sym_kl"

    def num_outputs(self, labels: Sequence[str]) -> int:
        return len(labels)

    def check_labels(self, labels: Sequence[str], positive_label: Optional[str]) -> Optional[str]:
        return None if len(labels) >= 2 else "key 'labels': a classification task needs at least two labels"

    def task_output(self, head_output: torch.Tensor, batch: Batch) -> torch.Tensor:
        return head_output  # (B, C)

    def loss(self, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output.float(), labels)

    def predict(self, outputs: np.ndarray) -> np.ndarray:
        return outputs.argmax(-1)

    def classes(self, spec: "TaskSpec") -> Optional[int]:
        return len(spec.labels)


class Regression(TaskType):
    name = "regression"
    default_divergence = "mse"
    divergences = DIVERGENCES_FOR_SCORES
    outputs = "scores (B,)"
    scores = True

    def task_output(self, head_output: torch.Tensor, batch: Batch) -> torch.Tensor:
        return head_output.squeeze(-1)  # (B, 1) -> (B,)

    def loss(self, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output.float(), labels.float())

    def predict(self, outputs: np.ndarray) -> np.ndarray:
        return outputs

    def confidence(self, output: torch.Tensor) -> Optional[torch.Tensor]:
        return None

    def loss_target(self, labels: np.ndarray, spec: "TaskSpec") -> np.ndarray:
        """(y − c) / s: the units the loss (and the head) work in (docs/method.md "Balancing tasks")."""
        return (labels - spec.target_center) / spec.target_scale

    def to_task_units(self, outputs: np.ndarray, spec: "TaskSpec") -> np.ndarray:
        """c + s · f: the head's outputs as scores of the task."""
        return spec.target_center + spec.target_scale * outputs


class Ranking(TaskType):
    """Listwise ranking (MT-DNN's QNLI ranking): softmax over a group's candidates."""

    name = "ranking"
    default_divergence = "sym_kl"
    grouped = True

    def check_labels(self, labels: Sequence[str], positive_label: Optional[str]) -> Optional[str]:
        if positive_label in labels:
            return None
        return f"key 'positive_label': {positive_label!r} must be one of labels {tuple(labels)}"

    def task_output(self, head_output: torch.Tensor, batch: Batch) -> torch.Tensor:
        if batch.candidate_slots is None or batch.candidate_mask is None:
            raise ValueError(f"task {batch.task!r} is a ranking task but its batch has no candidate groups")
        groups, candidates = batch.candidate_mask.shape
        scores = head_output.squeeze(-1)  # (N,)
        grid = torch.full((groups * candidates,), MASKED_SCORE, dtype=torch.float32, device=scores.device)
        grid = grid.index_put((batch.candidate_slots,), scores.float())
        return grid.view(groups, candidates)  # (G, C)

    def loss(self, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output.float(), labels)

    def predict(self, outputs: np.ndarray) -> np.ndarray:
        return outputs.argmax(-1)  # absent candidates hold −inf

    def metric_inputs(self, gold: np.ndarray, outputs: np.ndarray, mask: Optional[np.ndarray]) -> Predictions:
        return Predictions(gold=gold, scores=outputs, mask=mask)


TASK_TYPES: dict[str, TaskType] = {t.name: t for t in (Classification(), Regression(), Ranking())}


def task_type_of(spec: "TaskSpec") -> TaskType:
    return TASK_TYPES[spec.type]


def task_types_of(specs: "Mapping[str, TaskSpec]") -> set[TaskType]:
    """The distinct task types of a run's tasks (what a regulariser's options are checked against)."""
    return {task_type_of(spec) for spec in specs.values()}
