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
    """nnUNetTrainerVoCo with 100 epochs."""

    voco_budget = TrainingBudget(epochs=100)


class nnUNetTrainerVoCo_250epochs(nnUNetTrainerVoCo):
    """nnUNetTrainerVoCo with 250 epochs."""

    voco_budget = TrainingBudget(epochs=250)


class nnUNetTrainerVoCo_500epochs(nnUNetTrainerVoCo):
    """nnUNetTrainerVoCo with 500 epochs."""

    voco_budget = TrainingBudget(epochs=500)


class nnUNetTrainerVoCoScratch_100epochs(nnUNetTrainerVoCoScratch):
    """nnUNetTrainerVoCoScratch with 100 epochs."""

    voco_budget = TrainingBudget(epochs=100)


class nnUNetTrainerVoCoScratch_250epochs(nnUNetTrainerVoCoScratch):
    """nnUNetTrainerVoCoScratch with 250 epochs."""

    voco_budget = TrainingBudget(epochs=250)


class nnUNetTrainerVoCoScratch_500epochs(nnUNetTrainerVoCoScratch):
    """nnUNetTrainerVoCoScratch with 500 epochs."""

    voco_budget = TrainingBudget(epochs=500)
