"""Demo-budget variants of the four VoCo arms, seeded from the fold number (fold = seed).

``voco_demo`` (:mod:`nnunet_voco.demo.stages`) compares, on the same labelled phantom cases:

    * frozen probe: ``nnUNetTrainerVoCoFrozen_demo`` vs ``nnUNetTrainerVoCoFrozenScratch_demo``
      (:mod:`nnunet_voco.trainers.frozen_trainers`);
    * full fine-tuning: ``nnUNetTrainerVoCo_demo`` vs ``nnUNetTrainerVoCoScratch_demo``
      (:mod:`nnunet_voco.trainers.voco_trainers`).

The classes of one budget differ only in their base class, so each comparison is matched: same
network, optimiser, warm-up, epochs, iterations, batch size and augmentation.

Seeding: the fold number is the seed. ``__init__`` seeds ``random``, ``numpy`` and ``torch`` with
``fold`` before nnU-Net builds anything, so the decoder (and, in the scratch arms, the encoder) start
from a fold-specific initialisation. The demo's ``splits_final.json`` holds identical folds (same
training and validation cases), so ``nnUNetv2_train ID 3d_fullres {0,1,2} -tr X_demo`` is three seeds
of one experiment. nnU-Net's augmentation workers are not made deterministic: two runs with the same
seed differ a little. ``fold == "all"`` uses seed 0.

Budgets (``(epochs, iterations per epoch, batch size)``, fitted to 2 CPU cores; the timing behind
them is in :mod:`nnunet_voco.demo.stages`): ``_demo`` for the default ``voco_demo`` run,
``_demoquick`` for ``voco_demo --quick`` (a CI smoke test; its Dice says nothing). Both run one
validation iteration per epoch and no test-time mirroring in nnU-Net's final validation and in
``nnUNetv2_predict``, which keeps CPU inference cheap.
"""
from __future__ import annotations

import random

import numpy as np
import torch

from nnunet_voco.trainers.frozen_trainers import nnUNetTrainerVoCoFrozen, nnUNetTrainerVoCoFrozenScratch
from nnunet_voco.trainers.voco_trainers import nnUNetTrainerVoCo, nnUNetTrainerVoCoScratch

__all__ = ["nnUNetTrainerVoCo_demo", "nnUNetTrainerVoCoScratch_demo", "nnUNetTrainerVoCoFrozen_demo",
           "nnUNetTrainerVoCoFrozenScratch_demo", "nnUNetTrainerVoCo_demoquick", "nnUNetTrainerVoCoScratch_demoquick",
           "nnUNetTrainerVoCoFrozen_demoquick", "nnUNetTrainerVoCoFrozenScratch_demoquick"]

DEMO_BUDGET = (4, 8, 1)  # (epochs, iterations per epoch, batch size) of the default demo
QUICK_BUDGET = (1, 2, 1)  # the same for --quick


class _DemoBudgetMixin:
    """Seeds from the fold, sets ``voco_demo_budget``, 1 validation iteration, no mirroring."""

    voco_demo_budget = DEMO_BUDGET
    voco_warmup_epochs = 1

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        seed = fold if isinstance(fold, int) else 0
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, _ = self.voco_demo_budget
        self.num_val_iterations_per_epoch = 1

    def _set_batch_size_and_oversample(self):
        super()._set_batch_size_and_oversample()
        self.batch_size = min(self.batch_size, self.voco_demo_budget[2])

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        out = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None  # no test-time mirroring: 8x cheaper on CPU
        return out


class nnUNetTrainerVoCo_demo(_DemoBudgetMixin, nnUNetTrainerVoCo):
    """:class:`nnUNetTrainerVoCo` at the default ``voco_demo`` budget; fold = seed."""


class nnUNetTrainerVoCoScratch_demo(_DemoBudgetMixin, nnUNetTrainerVoCoScratch):
    """:class:`nnUNetTrainerVoCoScratch` at the default ``voco_demo`` budget; fold = seed."""


class nnUNetTrainerVoCoFrozen_demo(_DemoBudgetMixin, nnUNetTrainerVoCoFrozen):
    """:class:`nnUNetTrainerVoCoFrozen` at the default ``voco_demo`` budget; fold = seed."""


class nnUNetTrainerVoCoFrozenScratch_demo(_DemoBudgetMixin, nnUNetTrainerVoCoFrozenScratch):
    """:class:`nnUNetTrainerVoCoFrozenScratch` at the default ``voco_demo`` budget; fold = seed."""


class nnUNetTrainerVoCo_demoquick(nnUNetTrainerVoCo_demo):
    """:class:`nnUNetTrainerVoCo` at the ``voco_demo --quick`` budget; fold = seed."""

    voco_demo_budget = QUICK_BUDGET


class nnUNetTrainerVoCoScratch_demoquick(nnUNetTrainerVoCoScratch_demo):
    """:class:`nnUNetTrainerVoCoScratch` at the ``voco_demo --quick`` budget; fold = seed."""

    voco_demo_budget = QUICK_BUDGET


class nnUNetTrainerVoCoFrozen_demoquick(nnUNetTrainerVoCoFrozen_demo):
    """:class:`nnUNetTrainerVoCoFrozen` at the ``voco_demo --quick`` budget; fold = seed."""

    voco_demo_budget = QUICK_BUDGET


class nnUNetTrainerVoCoFrozenScratch_demoquick(nnUNetTrainerVoCoFrozenScratch_demo):
    """:class:`nnUNetTrainerVoCoFrozenScratch` at the ``voco_demo --quick`` budget; fold = seed."""

    voco_demo_budget = QUICK_BUDGET
