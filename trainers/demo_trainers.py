"""Demo-budget variants of the VoCo fine-tuning trainers and their matched from-scratch baselines.

``voco_demo`` (:mod:`nnunet_voco.demo_workflow`) fine-tunes nnU-Net's planned network twice on the
same few labelled phantom cases: once from the VoCo-pretrained encoder, once from random weights. The
pair of classes of each budget differ only in ``voco_load_weights`` (inherited from
:class:`~nnunet_voco.trainers.voco_trainers.nnUNetTrainerVoCo` and
:class:`~nnunet_voco.trainers.voco_trainers.nnUNetTrainerVoCoScratch`), so the comparison is matched:
same network, optimiser, warm-up, epochs, iterations, data augmentation and seedless sampling.

Budgets (fitted to 2 CPU cores; see ``DEMO_BUDGET`` and ``QUICK_BUDGET``):
    * ``_demo``: the default ``voco_demo`` run, 12 x 18 iterations (~6.5 min per arm on 2 idle CPUs).
      nnU-Net picks up the spine first; the liver appeared after ~150 iterations in our runs, the
      spleen and kidneys need more than the demo can afford on CPU.
    * ``_demoquick``: ``voco_demo --quick``, a CI smoke test; its Dice says nothing.

Both use one validation iteration per epoch and no mirroring at inference (the final validation and
``nnUNetv2_predict``), which keeps CPU validation fast, as the ``_smoke`` variants do.
"""
from __future__ import annotations

import torch

from nnunet_voco.trainers.voco_trainers import nnUNetTrainerVoCo, nnUNetTrainerVoCoScratch

__all__ = ["nnUNetTrainerVoCo_demo", "nnUNetTrainerVoCoScratch_demo", "nnUNetTrainerVoCo_demoquick",
           "nnUNetTrainerVoCoScratch_demoquick"]

DEMO_BUDGET = (12, 18)  # (epochs, iterations per epoch) of the default demo
QUICK_BUDGET = (1, 2)  # (epochs, iterations per epoch) of --quick


class _DemoBudgetMixin:
    """Sets the epochs x iterations of ``voco_demo_budget``, 1 validation iteration, no mirroring."""

    voco_demo_budget = DEMO_BUDGET
    voco_warmup_epochs = 1

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch = self.voco_demo_budget
        self.num_val_iterations_per_epoch = 1

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        out = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None  # no test-time mirroring: 8x cheaper on CPU
        return out


class nnUNetTrainerVoCo_demo(_DemoBudgetMixin, nnUNetTrainerVoCo):
    """:class:`nnUNetTrainerVoCo` at the default ``voco_demo`` budget."""


class nnUNetTrainerVoCoScratch_demo(_DemoBudgetMixin, nnUNetTrainerVoCoScratch):
    """:class:`nnUNetTrainerVoCoScratch` at the default ``voco_demo`` budget (matched baseline)."""


class nnUNetTrainerVoCo_demoquick(_DemoBudgetMixin, nnUNetTrainerVoCo):
    """:class:`nnUNetTrainerVoCo` at the ``voco_demo --quick`` budget."""

    voco_demo_budget = QUICK_BUDGET


class nnUNetTrainerVoCoScratch_demoquick(_DemoBudgetMixin, nnUNetTrainerVoCoScratch):
    """:class:`nnUNetTrainerVoCoScratch` at the ``voco_demo --quick`` budget (matched baseline)."""

    voco_demo_budget = QUICK_BUDGET
