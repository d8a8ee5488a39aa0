"""CPU smoke variants of the CNN VoCo trainers: 2 epochs of 2 iterations, for the end-to-end tests.

Each runs 1 validation iteration per epoch, a 1-epoch warm-up and no test-time mirroring (in
nnU-Net's final validation and ``nnUNetv2_predict``), which keeps CPU inference cheap. The Swin smoke
variants are in :mod:`nnunet_voco.trainers.swin_trainers`.
"""
from __future__ import annotations

from nnunet_voco.trainers.frozen_trainers import nnUNetTrainerVoCoFrozen, nnUNetTrainerVoCoFrozenScratch
from nnunet_voco.trainers.training_budget import SMOKE_BUDGET
from nnunet_voco.trainers.voco_trainers import nnUNetTrainerVoCo, nnUNetTrainerVoCoScratch

__all__ = ["nnUNetTrainerVoCo_smoke", "nnUNetTrainerVoCoScratch_smoke", "nnUNetTrainerVoCoFrozen_smoke",
           "nnUNetTrainerVoCoFrozenScratch_smoke"]


class nnUNetTrainerVoCo_smoke(nnUNetTrainerVoCo):
    """CPU smoke variant of :class:`nnUNetTrainerVoCo`."""

    voco_budget = SMOKE_BUDGET
    voco_test_time_mirroring = False


class nnUNetTrainerVoCoScratch_smoke(nnUNetTrainerVoCoScratch):
    """CPU smoke variant of :class:`nnUNetTrainerVoCoScratch`."""

    voco_budget = SMOKE_BUDGET
    voco_test_time_mirroring = False


class nnUNetTrainerVoCoFrozen_smoke(nnUNetTrainerVoCoFrozen):
    """CPU smoke variant of :class:`nnUNetTrainerVoCoFrozen`."""

    voco_budget = SMOKE_BUDGET
    voco_test_time_mirroring = False


class nnUNetTrainerVoCoFrozenScratch_smoke(nnUNetTrainerVoCoFrozenScratch):
    """CPU smoke variant of :class:`nnUNetTrainerVoCoFrozenScratch`."""

    voco_budget = SMOKE_BUDGET
    voco_test_time_mirroring = False
