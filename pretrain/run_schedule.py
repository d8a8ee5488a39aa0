"""The schedule of one pre-training run (learning rate and EMA momentum per step), and how ``--c``
with another ``--num_steps`` redefines it.

Without a redefinition the schedule is :func:`~nnunet_voco.voco.schedule.lr_at` and
:func:`~nnunet_voco.voco.ema.momentum_at` of the run's settings. Resuming at step ``s`` with a new end
``N`` never jumps: from ``s`` on, both values continue from what they were at ``s`` and follow a half
cosine to their end values (``min_lr``, ``ema_momentum_final``) at ``N``. A run still in its warm-up
keeps the warm-up and only moves the end of the cosine. The schedule is stored (as a plain dict) in
the run's config, so every checkpoint carries the one it was trained with.
"""
from __future__ import annotations

import dataclasses
import math

from nnunet_voco.voco.ema import momentum_at
from nnunet_voco.voco.schedule import lr_at


def default_warmup(num_steps: int) -> int:
    """Warm-up when ``--warmup_steps`` is not given: min(5000, 5% of the steps)."""
    return min(5000, num_steps // 20)


@dataclasses.dataclass(frozen=True)
class RunSchedule:
    """Learning rate and EMA momentum per step; ``restart_*`` describe a redefinition at a resume.

    Args:
        lr: peak learning rate. min_lr: end of the cosine. warmup: warm-up steps.
        num_steps: where both schedules end. momentum: EMA momentum. momentum_final: its ramp target.
        restart_step: step of the last redefinition (None: the plain schedule); the values are
            defined from the latest step a run resumed at on, earlier steps are never asked for again.
        restart_lr: learning rate at ``restart_step``. restart_momentum: momentum at ``restart_step``.
    """

    lr: float
    min_lr: float
    warmup: int
    num_steps: int
    momentum: float
    momentum_final: float | None = None
    restart_step: int | None = None
    restart_lr: float | None = None
    restart_momentum: float | None = None

    def lr_at(self, step: int) -> float:
        if self.restart_step is None or step < self.restart_step:
            return lr_at(step, self.lr, self.warmup, self.num_steps, self.min_lr)
        return self.min_lr + (self.restart_lr - self.min_lr) * _half_cosine(step, self.restart_step, self.num_steps)

    def momentum_at(self, step: int) -> float:
        if self.restart_step is None or step < self.restart_step or self.momentum_final is None:
            return momentum_at(step, self.num_steps, self.momentum, self.momentum_final)
        done = 1.0 - _half_cosine(step, self.restart_step, self.num_steps - 1)
        return self.restart_momentum + (self.momentum_final - self.restart_momentum) * done

    def ended_at(self, step: int, num_steps: int) -> "RunSchedule":
        """This schedule redefined at ``step`` to end at ``num_steps`` (continuous at ``step``)."""
        if self.restart_step is None and step < self.warmup:
            return dataclasses.replace(self, num_steps=num_steps)  # the warm-up does not depend on the end
        return dataclasses.replace(self, num_steps=num_steps, restart_step=step, restart_lr=self.lr_at(step),
                                   restart_momentum=self.momentum_at(step))

    def describe_change(self, previous: "RunSchedule", step: int) -> str:
        """One log line saying what :meth:`ended_at` did."""
        head = f"--num_steps changed from {previous.num_steps} to {self.num_steps} on resume at step {step}"
        if self.restart_step != step:
            return (f"{head}: still in the {self.warmup}-step warm-up, which is kept; the cosine now ends at step "
                    f"{self.num_steps}")
        ramp = "" if self.momentum_final is None else \
            f"; the EMA momentum continues from {self.restart_momentum:.6g} to {self.momentum_final:g}"
        return (f"{head}: the schedule is redefined from step {step}: the learning rate continues from "
                f"{self.restart_lr:.4g} and follows a half cosine to --min_lr {self.min_lr:g} at step "
                f"{self.num_steps}{ramp}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "RunSchedule":
        return cls(**{f.name: values.get(f.name) for f in dataclasses.fields(cls) if f.name in values})


def _half_cosine(step: int, start: int, end: int) -> float:
    """1 at ``start``, 0 at ``end`` and beyond."""
    progress = min(max((step - start) / max(end - start, 1), 0.0), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))
