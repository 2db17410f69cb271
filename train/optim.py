"""Learning-rate schedules for the training loop: linear warmup, then constant, linear or cosine decay.

The optimizer itself is built by the strategy (``neurorit.dist.Strategy.optimizer``): which Adam runs best
depends on DeepSpeed's offload settings and the device. Weight decay and lr come from the stage config;
gradient clipping lives in the DeepSpeed config.
"""
from __future__ import annotations

import math


def lr_factor(schedule: str, warmup: int, total: int):
    """Multiplier of the base lr at optimizer step ``s`` (0-based): linear warmup, then constant/linear/cosine."""
    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / (warmup + 1)
        progress = (s - warmup) / max(1, total - warmup)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0
    return factor
