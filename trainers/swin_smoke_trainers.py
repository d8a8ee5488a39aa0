"""CPU smoke variants of the Swin trainers: 2 epochs of 2 iterations, for the end-to-end tests.

Feature size 12 (the smallest valid one) unless the weights say otherwise, no gradient checkpointing,
1 validation iteration per epoch, a 1-epoch warm-up and no test-time mirroring.
"""
from __future__ import annotations

from nnunet_voco.trainers.swin_trainers import nnUNetTrainerSwinScratch, nnUNetTrainerVoCoSwin
from nnunet_voco.trainers.training_budget import SMOKE_BUDGET

__all__ = ["nnUNetTrainerVoCoSwin_smoke", "nnUNetTrainerSwinScratch_smoke"]


class nnUNetTrainerVoCoSwin_smoke(nnUNetTrainerVoCoSwin):
    """CPU smoke variant of :class:`nnUNetTrainerVoCoSwin`."""

    voco_budget = SMOKE_BUDGET
    voco_test_time_mirroring = False
    voco_swin_feature_size = 12
    voco_gradient_checkpointing = False


class nnUNetTrainerSwinScratch_smoke(nnUNetTrainerSwinScratch):
    """CPU smoke variant of :class:`nnUNetTrainerSwinScratch`."""

    voco_budget = SMOKE_BUDGET
    voco_test_time_mirroring = False
    voco_swin_feature_size = 12
    voco_gradient_checkpointing = False
