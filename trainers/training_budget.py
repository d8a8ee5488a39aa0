"""How long a VoCo trainer trains and warms up: the one budget attribute every variant sets.

Each trainer class carries ``voco_budget = TrainingBudget(...)``; :class:`nnUNetTrainerVoCo`'s
``__init__`` reads it once (epochs and iterations), its batch-size hook applies the cap and its
optimiser takes the warm-up from it. A field left at None keeps nnU-Net's value (1000 epochs of 250
training and 50 validation iterations; the plans' batch size). This replaces nnU-Net's habit of
overriding ``__init__`` in every length variant.

Warm-up: linear over ``warmup_fraction`` of the epochs (2%, at least one epoch: 20 of 1000, 2 of 100,
1 of 2), so that the random decoder's first gradients do not overwrite the pretrained encoder; the
fraction is declared here once instead of an epoch count in every variant.
"""
from __future__ import annotations

from typing import NamedTuple, Optional


class TrainingBudget(NamedTuple):
    """Epochs, iterations, batch-size cap and warm-up of a trainer variant (None: nnU-Net's value)."""

    epochs: Optional[int] = None
    iterations_per_epoch: Optional[int] = None
    val_iterations_per_epoch: Optional[int] = None
    batch_size: Optional[int] = None  # an upper bound on the plans' batch size
    warmup_fraction: float = 0.02  # of the epochs, linear, before nnU-Net's poly decay

    def warmup_epochs(self, num_epochs: int) -> int:
        """Warm-up epochs for a run of ``num_epochs``: ``max(1, round(warmup_fraction * num_epochs))``."""
        return max(1, round(self.warmup_fraction * num_epochs))


SMOKE_BUDGET = TrainingBudget(epochs=2, iterations_per_epoch=2, val_iterations_per_epoch=1)  # CPU tests
