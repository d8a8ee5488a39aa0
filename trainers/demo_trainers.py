"""Demo-budget variants of the four VoCo arms, seeded from the fold number (fold = seed).

``voco_demo`` (:mod:`nnunet_voco.demo.stages`) compares, on the same labelled phantom cases:

    * frozen probe: ``nnUNetTrainerVoCoFrozen_demo`` vs ``nnUNetTrainerVoCoFrozenScratch_demo``
      (:mod:`nnunet_voco.trainers.frozen_trainers`);
    * full fine-tuning: ``nnUNetTrainerVoCo_demo`` vs ``nnUNetTrainerVoCoScratch_demo``
      (:mod:`nnunet_voco.trainers.voco_trainers`).

The classes of one budget differ only in their base class, so each comparison is matched: same
network, optimiser, warm-up, epochs, iterations, batch size and augmentation.

Seeding (``voco_seed_from_fold``): the fold number is the seed. ``random``, ``numpy`` and ``torch``
are seeded with ``fold`` before nnU-Net builds anything, so the decoder (and, in the scratch arms,
the encoder) start from a fold-specific initialisation. The demo's ``splits_final.json`` holds
identical folds (same training and validation cases), so ``nnUNetv2_train ID 3d_fullres {0,1,2} -tr
X_demo`` is three seeds of one experiment. nnU-Net's augmentation workers are not made
deterministic: two runs with the same seed differ a little. ``fold == "all"`` uses seed 0.

Budgets (fitted to 2 CPU cores; the timing behind them is in :mod:`nnunet_voco.demo.run_sizes`):
``_demo`` for the default ``voco_demo`` run, ``_demoquick`` for ``voco_demo --quick`` (a CI smoke
test; its Dice says nothing). Both run one validation iteration per epoch and no test-time mirroring
in nnU-Net's final validation and in ``nnUNetv2_predict``, which keeps CPU inference cheap.
"""
from __future__ import annotations

from nnunet_voco.trainers.frozen_trainers import nnUNetTrainerVoCoFrozen, nnUNetTrainerVoCoFrozenScratch
from nnunet_voco.trainers.training_budget import TrainingBudget
from nnunet_voco.trainers.voco_trainers import nnUNetTrainerVoCo, nnUNetTrainerVoCoScratch

__all__ = ["nnUNetTrainerVoCo_demo", "nnUNetTrainerVoCoScratch_demo", "nnUNetTrainerVoCoFrozen_demo",
           "nnUNetTrainerVoCoFrozenScratch_demo", "nnUNetTrainerVoCo_demoquick", "nnUNetTrainerVoCoScratch_demoquick",
           "nnUNetTrainerVoCoFrozen_demoquick", "nnUNetTrainerVoCoFrozenScratch_demoquick"]

DEMO_BUDGET = TrainingBudget(epochs=4, iterations_per_epoch=8, val_iterations_per_epoch=1, batch_size=1)
QUICK_BUDGET = TrainingBudget(epochs=1, iterations_per_epoch=2, val_iterations_per_epoch=1, batch_size=1)


class nnUNetTrainerVoCo_demo(nnUNetTrainerVoCo):
    """:class:`nnUNetTrainerVoCo` at the default ``voco_demo`` budget; fold = seed."""

    voco_budget = DEMO_BUDGET
    voco_seed_from_fold = True
    voco_test_time_mirroring = False


class nnUNetTrainerVoCoScratch_demo(nnUNetTrainerVoCoScratch):
    """:class:`nnUNetTrainerVoCoScratch` at the default ``voco_demo`` budget; fold = seed."""

    voco_budget = DEMO_BUDGET
    voco_seed_from_fold = True
    voco_test_time_mirroring = False


class nnUNetTrainerVoCoFrozen_demo(nnUNetTrainerVoCoFrozen):
    """:class:`nnUNetTrainerVoCoFrozen` at the default ``voco_demo`` budget; fold = seed."""

    voco_budget = DEMO_BUDGET
    voco_seed_from_fold = True
    voco_test_time_mirroring = False


class nnUNetTrainerVoCoFrozenScratch_demo(nnUNetTrainerVoCoFrozenScratch):
    """:class:`nnUNetTrainerVoCoFrozenScratch` at the default ``voco_demo`` budget; fold = seed."""

    voco_budget = DEMO_BUDGET
    voco_seed_from_fold = True
    voco_test_time_mirroring = False


class nnUNetTrainerVoCo_demoquick(nnUNetTrainerVoCo_demo):
    """:class:`nnUNetTrainerVoCo` at the ``voco_demo --quick`` budget; fold = seed."""

    voco_budget = QUICK_BUDGET


class nnUNetTrainerVoCoScratch_demoquick(nnUNetTrainerVoCoScratch_demo):
    """:class:`nnUNetTrainerVoCoScratch` at the ``voco_demo --quick`` budget; fold = seed."""

    voco_budget = QUICK_BUDGET


class nnUNetTrainerVoCoFrozen_demoquick(nnUNetTrainerVoCoFrozen_demo):
    """:class:`nnUNetTrainerVoCoFrozen` at the ``voco_demo --quick`` budget; fold = seed."""

    voco_budget = QUICK_BUDGET


class nnUNetTrainerVoCoFrozenScratch_demoquick(nnUNetTrainerVoCoFrozenScratch_demo):
    """:class:`nnUNetTrainerVoCoFrozenScratch` at the ``voco_demo --quick`` budget; fold = seed."""

    voco_budget = QUICK_BUDGET
