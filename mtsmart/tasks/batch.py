"""The one mini-batch type every component shares: one task per batch (MT-DNN)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import torch


@dataclass
class Batch:
    """A padded batch of N encoder sequences of one task.

    For classification and regression each sequence is one example (N = B). For ranking, the
    N sequences are the candidates of G query groups: `candidate_slots[n]` is the flat index
    g·C + c of sequence n in the (G, C) score grid, and `candidate_mask` (G, C) marks real
    candidates. `labels` are class ids (B,) long, scores (B,) float, or the index of each
    group's positive candidate (G,) long; None for unlabelled (test) data.
    `example_ids` are the dataset positions of the examples (groups for ranking), used to put
    predictions back in dataset order.
    """

    task: str
    input_ids: torch.Tensor  # (N, T) long
    attention_mask: torch.Tensor  # (N, T) long, 1 = real token
    token_type_ids: Optional[torch.Tensor] = None  # (N, T) long
    labels: Optional[torch.Tensor] = None
    candidate_slots: Optional[torch.Tensor] = None  # (N,) long, ranking only
    candidate_mask: Optional[torch.Tensor] = None  # (G, C) bool, ranking only
    example_ids: list[int] = field(default_factory=list)

    def to(self, device: torch.device | str) -> "Batch":
        def move(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if t is None else t.to(device, non_blocking=True)

        return replace(
            self,
            input_ids=move(self.input_ids),
            attention_mask=move(self.attention_mask),
            token_type_ids=move(self.token_type_ids),
            labels=move(self.labels),
            candidate_slots=move(self.candidate_slots),
            candidate_mask=move(self.candidate_mask),
        )

    @property
    def num_examples(self) -> int:
        """Examples the batch scores: groups for ranking, sequences otherwise."""
        if self.candidate_mask is not None:
            return int(self.candidate_mask.shape[0])
        return int(self.input_ids.shape[0])

    @property
    def num_sequences(self) -> int:
        return int(self.input_ids.shape[0])
