"""The one record every reader returns: a sentence (pair) with its label, before tokenisation."""
from __future__ import annotations

from dataclasses import dataclass

@dataclass(frozen=True)
class Example:
    """One row of a task's split.

    `label` is a class index into `spec.labels` (classification, and ranking candidates), a
    float score (regression), or None for unlabelled rows (test splits). `origin` is
    "path:line" (or "dataset[row]" from the hub) so later errors can point at the row.
    `group` is the query id of a ranking candidate; None otherwise.
    """

    text_a: str
    text_b: str | None
    label: int | float | None
    origin: str
    group: str | None = None
