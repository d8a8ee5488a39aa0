"""Learning-rate schedule of VoCo pre-training: linear warm-up, then half-cosine decay.

Both official codes warm up linearly for 5,000 steps and then decay with a half cosine to zero at
``num_steps`` (Luffy03/VoCo ``voco_train.py``; Luffy03/Large-Scale-Medical
``Self-supervised/voco_train.py``). The schedule is a pure function of the global step, so a resumed
run continues exactly where it stopped (the official code restarts the schedule on resume).
"""
from __future__ import annotations

import math


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """Learning rate at 0-based ``step``.

    Args:
        step: global optimiser step.
        base_lr: peak learning rate, reached at the end of the warm-up.
        warmup_steps: length of the linear warm-up (0 disables it).
        total_steps: step at which the cosine reaches ``min_lr``.
        min_lr: floor of the schedule.

    Returns:
        The learning rate.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max((step - warmup_steps) / span, 0.0), 1.0)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
