"""Scalars to TensorBoard (rank 0 only), and their means over a logging interval."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional


class MetricLogger:
    def __init__(self, log_dir: Optional[Path]):
        """log_dir None = a logger that drops everything (ranks other than 0)."""
        self.writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def log_dict(self, scalars: Mapping[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self.log(tag, value, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class ScalarMeter:
    """Means of scalars over a logging interval (each tag over the steps that reported it)."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, scalars: Mapping[str, float]) -> None:
        for tag, value in scalars.items():
            self.sums[tag] = self.sums.get(tag, 0.0) + value
            self.counts[tag] = self.counts.get(tag, 0) + 1

    def means(self) -> dict[str, float]:
        return {tag: self.sums[tag] / self.counts[tag] for tag in self.sums}
