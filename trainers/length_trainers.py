"""Shorter training budgets of the VoCo trainers, as nnU-Net's ``nnUNetTrainer_Xepochs`` variants.

The warm-up stays 2% of the epochs (at least 1). Each fine-tuned variant has a from-scratch twin with
the same budget, so that a gain is measured fairly.
"""
from __future__ import annotations

from nnunet_voco.trainers.training_budget import TrainingBudget
from nnunet_voco.trainers.voco_trainers import nnUNetTrainerVoCo, nnUNetTrainerVoCoScratch

__all__ = ["nnUNetTrainerVoCo_100epochs", "nnUNetTrainerVoCo_250epochs", "nnUNetTrainerVoCo_500epochs",
           "nnUNetTrainerVoCoScratch_100epochs", "nnUNetTrainerVoCoScratch_250epochs",
           "nnUNetTrainerVoCoScratch_500epochs"]


class nnUNetTrainerVoCo_100epochs(nnUNetTrainerVoCo):
    """nnUNetTrainerVoCo with 100 epochs (warm-up 2)."""

    voco_budget = TrainingBudget(epochs=100)
    voco_warmup_epochs = 2


class nnUNetTrainerVoCo_250epochs(nnUNetTrainerVoCo):
    """nnUNetTrainerVoCo with 250 epochs (warm-up 5)."""

    voco_budget = TrainingBudget(epochs=250)
    voco_warmup_epochs = 5


class nnUNetTrainerVoCo_500epochs(nnUNetTrainerVoCo):
    """nnUNetTrainerVoCo with 500 epochs (warm-up 10)."""

    voco_budget = TrainingBudget(epochs=500)
    voco_warmup_epochs = 10


class nnUNetTrainerVoCoScratch_100epochs(nnUNetTrainerVoCoScratch):
    """nnUNetTrainerVoCoScratch with 100 epochs (warm-up 2)."""

    voco_budget = TrainingBudget(epochs=100)
    voco_warmup_epochs = 2


class nnUNetTrainerVoCoScratch_250epochs(nnUNetTrainerVoCoScratch):
    """nnUNetTrainerVoCoScratch with 250 epochs (warm-up 5)."""

    voco_budget = TrainingBudget(epochs=250)
    voco_warmup_epochs = 5


class nnUNetTrainerVoCoScratch_500epochs(nnUNetTrainerVoCoScratch):
    """nnUNetTrainerVoCoScratch with 500 epochs (warm-up 10)."""

    voco_budget = TrainingBudget(epochs=500)
    voco_warmup_epochs = 10
