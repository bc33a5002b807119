"""Learning-rate schedule as a pure function of the step: nothing to checkpoint."""
from __future__ import annotations


def linear_warmup_decay(step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the peak LR at optimizer step `step` (0-based): 0→1 linearly over the
    warm-up, then linearly down to 0 at `total_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    remaining = total_steps - step
    return max(0.0, remaining / max(1, total_steps - warmup_steps))
