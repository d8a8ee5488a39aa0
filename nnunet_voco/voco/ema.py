"""Momentum (EMA) teacher updates and their schedule.

Both official VoCo codes update the teacher as ``teacher <- m * teacher + (1 - m) * student`` with a
fixed ``m = 0.9`` every step (v1: backbone and projector; v2: projector only). Teachers here start
as a copy of the student (the official code initialises them independently at random — a documented
deviation: a random teacher only adds noise to the first hundred steps) and never require gradients,
so DDP needs no ``find_unused_parameters``.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


def make_teacher(student: nn.Module) -> nn.Module:
    """A gradient-free deep copy of ``student``."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def update_ema(student: nn.Module, teacher: nn.Module, momentum: float) -> None:
    """``teacher <- momentum * teacher + (1 - momentum) * student`` for parameters and float buffers."""
    t_params = [p for p in teacher.parameters()]
    s_params = [p.detach() for p in student.parameters()]
    if t_params:
        torch._foreach_mul_(t_params, momentum)
        torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)
    for t_buf, s_buf in zip(teacher.buffers(), student.buffers()):
        if t_buf.dtype.is_floating_point:
            t_buf.mul_(momentum).add_(s_buf.detach(), alpha=1.0 - momentum)
        else:
            t_buf.copy_(s_buf)


def momentum_at(step: int, total_steps: int, base: float, final: float | None = None) -> float:
    """EMA momentum at ``step``: constant ``base``, or a cosine ramp from ``base`` to ``final``."""
    if final is None or total_steps <= 1:
        return base
    progress = min(max(step / (total_steps - 1), 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0

