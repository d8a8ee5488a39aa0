"""How long a VoCo trainer trains: the one budget attribute every variant sets.

Each trainer class carries ``voco_budget = TrainingBudget(...)``; :class:`nnUNetTrainerVoCo`'s
``__init__`` reads it once (epochs and iterations) and its batch-size hook applies the cap. A field
left at None keeps nnU-Net's value (1000 epochs of 250 training and 50 validation iterations; the
plans' batch size). This replaces nnU-Net's habit of overriding ``__init__`` in every length variant.
"""
from __future__ import annotations

from typing import NamedTuple, Optional


class TrainingBudget(NamedTuple):
    """Epochs, iterations and batch-size cap of a trainer variant (None: nnU-Net's value)."""

    epochs: Optional[int] = None
    iterations_per_epoch: Optional[int] = None
    val_iterations_per_epoch: Optional[int] = None
    batch_size: Optional[int] = None  # an upper bound on the plans' batch size


SMOKE_BUDGET = TrainingBudget(epochs=2, iterations_per_epoch=2, val_iterations_per_epoch=1)  # CPU tests
