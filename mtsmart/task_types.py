"""The three task types as code: each owns its head, output shape, loss, divergence and prediction.

Outputs ("task outputs") by type:
- classification: logits (B, C);
- regression: scores (B,);
- ranking: scores (G, C) of each query group's candidates, absent slots at MASKED_SCORE, so a
  softmax over the last dim is the distribution over a group's candidates (the reference code
  reshaped only one side, SMART.md §4 defect 6; here every consumer sees the grouped form).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mtsmart.batch import Batch
from mtsmart.divergence import MASKED_SCORE
from mtsmart.task_spec import TaskSpec


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
    default_divergence: str = "sym_kl"

    def make_head(self, hidden_size: int, spec: TaskSpec) -> Head:
        return Head(hidden_size, spec.num_outputs, spec.dropout)

    def task_output(self, head_output: torch.Tensor, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, output: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Classification(TaskType):
    name = "classification"
    default_divergence = "sym_kl"

    def task_output(self, head_output: torch.Tensor, batch: Batch) -> torch.Tensor:
        return head_output  # (B, C)

    def loss(self, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output.float(), labels)

    def predict(self, output: torch.Tensor) -> torch.Tensor:
        return output.argmax(dim=-1)


class Regression(TaskType):
    name = "regression"
    default_divergence = "mse"

    def task_output(self, head_output: torch.Tensor, batch: Batch) -> torch.Tensor:
        return head_output.squeeze(-1)  # (B, 1) -> (B,)

    def loss(self, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output.float(), labels.float())

    def predict(self, output: torch.Tensor) -> torch.Tensor:
        return output.float()


class Ranking(TaskType):
    """Listwise ranking (MT-DNN's QNLI ranking): softmax over a group's candidates."""

    name = "ranking"
    default_divergence = "sym_kl"

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

    def predict(self, output: torch.Tensor) -> torch.Tensor:
        return output.argmax(dim=-1)


TASK_TYPES: dict[str, TaskType] = {t.name: t for t in (Classification(), Regression(), Ranking())}


def task_type_of(spec: TaskSpec) -> TaskType:
    return TASK_TYPES[spec.type]
