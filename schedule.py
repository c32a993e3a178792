"""Learning-rate schedule: a pure function of the step, applied as ``base_lr * lr_factor(...)``."""

from __future__ import annotations

import math


def lr_factor(step: int, warmup_steps: int, max_steps: int, min_factor: float = 0.1) -> float:
    """Linear warmup to 1, cosine decay to min_factor at max_steps, then min_factor.

    Step 0 already trains: warmup gives (step + 1) / warmup_steps, never 0.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step >= max_steps:
        return min_factor
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_factor + 0.5 * (1.0 - min_factor) * (1.0 + math.cos(math.pi * progress))
