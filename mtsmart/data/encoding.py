"""Examples → token ids (once, up front) → padded Batches (per step).

Tokenisation uses the encoder's own tokenizer on sentence pairs, truncating the longer
side first to `max_seq_len` tokens; nothing is padded here. `collate` pads each batch only to
its longest sequence (dynamic padding).

Ranking: the candidates of one query group become one GroupItem whose `target` is the position
of the group's single positive candidate. A labelled group without exactly one positive
cannot be ranked (no, or several, right answers): it is left out, logged, and counted in the
returned list's `excluded_groups`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from mtsmart.tasks.batch import Batch
from mtsmart.data.examples import Example
from mtsmart.tasks.spec import TaskSpec
from mtsmart.tasks.types import task_type_of

log = logging.getLogger(__name__)

# Examples per tokenizer call: large enough for the fast (Rust) tokenizer to batch well.
TOKENIZE_CHUNK = 4096


@dataclass(frozen=True, eq=False)
class Item:
    """One tokenised sequence. `index` is its example's position in the split."""

    input_ids: np.ndarray  # (T,) int32
    token_type_ids: Optional[np.ndarray]  # (T,) int32; None if the tokenizer has none
    label: Union[int, float, None]
    index: int

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass(frozen=True, eq=False)
class GroupItem:
    """One ranking query: its candidates (Items, in file order) and the positive's position."""

    candidates: tuple[Item, ...]
    target: Optional[int]  # None for unlabelled groups
    index: int  # position of the group in the encoded list
    group: str  # the query id (Example.group)

    @property
    def label(self) -> Optional[int]:
        return self.target

    @property
    def length(self) -> int:
        """Longest candidate: what the group costs in a padded batch."""
        return max(c.length for c in self.candidates)


class EncodedSplit(list):
    """A list of Items (GroupItems for ranking) that also tells how many groups were excluded."""

    def __init__(self, items: Sequence = (), excluded_groups: int = 0):
        super().__init__(items)
        self.excluded_groups = excluded_groups


def encode_split(
    spec: TaskSpec, examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase, max_seq_len: int
) -> EncodedSplit:
    """Tokenise a split: one Item per example, or one GroupItem per query group (ranking)."""
    items = tokenize(examples, tokenizer, max_seq_len)
    if not task_type_of(spec).grouped:
        return EncodedSplit(items)
    return group_candidates(spec, examples, items)


def tokenize(examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase, max_seq_len: int) -> list[Item]:
    paired = [ex.text_b is not None for ex in examples]
    if any(paired) and not all(paired):
        single = examples[paired.index(False)]
        raise ValueError(f"{single.origin}: a single sentence in a split of sentence pairs")
    items: list[Item] = []
    for start in range(0, len(examples), TOKENIZE_CHUNK):
        chunk = examples[start:start + TOKENIZE_CHUNK]
        second = [ex.text_b for ex in chunk] if paired and paired[0] else None
        encoded = tokenizer(
            [ex.text_a for ex in chunk],
            second,
            truncation="longest_first",
            max_length=max_seq_len,
            padding=False,
            return_attention_mask=False,
        )
        types = encoded.get("token_type_ids")
        for j, ex in enumerate(chunk):
            items.append(Item(
                input_ids=np.asarray(encoded["input_ids"][j], dtype=np.int32),
                token_type_ids=None if types is None else np.asarray(types[j], dtype=np.int32),
                label=ex.label,
                index=start + j,
            ))
    return items


def group_candidates(spec: TaskSpec, examples: Sequence[Example], items: list[Item]) -> EncodedSplit:
    """GroupItems in order of each group's first row; groups without one positive excluded."""
    positive = spec.labels.index(spec.positive_label)
    members: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        if ex.group is None:
            raise ValueError(f"{ex.origin}: ranking task {spec.name!r} needs a group (query id) per row")
        members.setdefault(ex.group, []).append(i)
    groups: list[GroupItem] = []
    excluded = 0
    for key, rows in members.items():
        labels = [examples[i].label for i in rows]
        target = None
        if any(label is not None for label in labels):
            hits = [c for c, label in enumerate(labels) if label == positive]
            if len(hits) != 1:
                excluded += 1
                continue
            target = hits[0]
        groups.append(GroupItem(tuple(items[i] for i in rows), target, len(groups), key))
    if excluded:
        log.warning(
            "task %s: %d of %d query groups have no or several positive candidates and cannot be "
            "ranked; they are excluded", spec.name, excluded, len(members),
        )
    return EncodedSplit(groups, excluded_groups=excluded)


def collate(task: str, items: Sequence[Union[Item, GroupItem]], pad_token_id: int) -> Batch:
    """A Batch padded to its longest sequence; ranking items give the (G, C) candidate grid."""
    if not items:
        raise ValueError(f"task {task!r}: cannot collate an empty batch")
    if isinstance(items[0], GroupItem):
        return _collate_groups(task, items, pad_token_id)
    return _padded_batch(task, items, [item.label for item in items], [item.index for item in items], pad_token_id)


def _collate_groups(task: str, groups: Sequence[GroupItem], pad_token_id: int) -> Batch:
    width = max(len(g.candidates) for g in groups)  # C: the largest group in the batch
    sequences = [c for g in groups for c in g.candidates]
    # Sequence n of group g, candidate c sits at flat slot g*C + c of the (G, C) score grid.
    slots = [g * width + c for g, group in enumerate(groups) for c in range(len(group.candidates))]
    mask = torch.zeros(len(groups), width, dtype=torch.bool)
    for g, group in enumerate(groups):
        mask[g, : len(group.candidates)] = True
    return _padded_batch(
        task, sequences, [g.target for g in groups], [g.index for g in groups], pad_token_id,
        candidate_slots=torch.tensor(slots, dtype=torch.long), candidate_mask=mask,
    )


def _padded_batch(task: str, sequences: Sequence[Item], labels: list, example_ids: list[int], pad_token_id: int, **extra) -> Batch:
    """The Batch of `sequences` padded to the longest; labels/example_ids are per example (or group)."""
    input_ids, attention_mask, token_type_ids = _pad(sequences, pad_token_id)
    return Batch(
        task=task,
        input_ids=input_ids,
        attention_mask=attention_mask,
        token_type_ids=token_type_ids,
        labels=_labels(labels, task),
        example_ids=example_ids,
        **extra,
    )


def _pad(items: Sequence[Item], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """input_ids, attention_mask, token_type_ids: each (N, T) long, T = longest item."""
    longest = max(item.length for item in items)
    ids = np.full((len(items), longest), pad_token_id, dtype=np.int64)
    mask = np.zeros((len(items), longest), dtype=np.int64)
    has_types = items[0].token_type_ids is not None
    types = np.zeros((len(items), longest), dtype=np.int64) if has_types else None
    for n, item in enumerate(items):
        ids[n, : item.length] = item.input_ids
        mask[n, : item.length] = 1
        if has_types:
            types[n, : item.length] = item.token_type_ids
    token_types = torch.from_numpy(types) if has_types else None
    return torch.from_numpy(ids), torch.from_numpy(mask), token_types


def _labels(labels: list, task: str) -> Optional[torch.Tensor]:
    """Class ids / group targets → (B,) long; scores → (B,) float32; all None → None."""
    missing = [label is None for label in labels]
    if all(missing):
        return None
    if any(missing):
        raise ValueError(f"task {task!r}: a batch mixes labelled and unlabelled examples")
    if any(isinstance(label, float) for label in labels):
        return torch.tensor(labels, dtype=torch.float32)
    return torch.tensor(labels, dtype=torch.long)
