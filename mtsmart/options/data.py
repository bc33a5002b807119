"""Data options (`data.*`)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from mtsmart.options.fields import check_field_types


def _default_root() -> str:
    # data.root defaults to $MTSMART_DATA so one export serves every command.
    return os.environ.get("MTSMART_DATA", "data")


@dataclass
class DataConfig:
    root: str = field(default_factory=_default_root)  # folder holding glue/, snli/, scitail/, hf/
    source: Literal["auto", "local", "hub"] = "auto"  # auto: local files under root when there, else the Hugging Face hub
    max_seq_len: int = 128  # tokens, pair included; longer inputs are truncated
    train_fraction: float = 1.0  # keep a seed-deterministic fraction of each training set
    train_examples: int = 0  # keep this many seed-chosen examples of each training set (0 = all; not with train_fraction)
    group_by_length: bool = False  # batches of similar lengths (less padding), still shuffled

    def __post_init__(self) -> None:
        check_field_types("data", self)
        if not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(f"data.train_fraction: {self.train_fraction} must be in (0, 1]")
        if self.train_examples < 0:
            raise ValueError(f"data.train_examples: {self.train_examples} must be >= 0 (0 = all)")
        if self.train_examples > 0 and self.train_fraction != 1.0:
            raise ValueError("data.train_examples and data.train_fraction both subsample; give one of them")
        if self.max_seq_len < 8:
            raise ValueError(f"data.max_seq_len: {self.max_seq_len} is too short (at least 8)")
