"""nnU-Net trainers that fine-tune VoCo-pretrained encoders, and the matched from-scratch baseline.

``nnUNetv2_train D 3d_fullres FOLD -tr nnUNetTrainerVoCo [-p nnUNetResEncUNetMPlans]`` builds exactly
the network nnU-Net plans for D, finds the weights ``voco_pretrain`` wrote for the same dataset, plans
and configuration (or ``$nnUNet_voco_weights``; rules in :mod:`nnunet_voco.finetune.weights_lookup`), checks
that they fit, loads them loudly into the encoder at the start of a fresh training run, and trains
with nnU-Net's recipe plus a learning-rate warm-up (:mod:`nnunet_voco.finetune.lr_schedule`).

Defaults and why:
    * warm-up: 2% of the epochs (20 of 1000), declared once in ``voco_budget``
      (:class:`~nnunet_voco.trainers.training_budget.TrainingBudget`): linear warm-up of nnU-Net's SGD
      (lr 1e-2, momentum 0.99) so that the gradients of the random decoder do not overwrite the
      pretrained encoder in the first epochs; afterwards nnU-Net's poly schedule over the remaining epochs.
    * ``voco_decoder_first_epochs = 0``: the encoder trains from the start (set > 0 to freeze it for
      the first epochs; its learning rate is 0 then, so DDP needs no special handling).
    * ``voco_encoder_lr_scale = 1.0``: no lower encoder learning rate by default, because VoCo is
      pretrained on the same data distribution and patch size as fine-tuning.

``nnUNetTrainerVoCoScratch`` is the same network, schedule and budget without weights, so that a
gain is measured fairly. Variants set class attributes only: ``voco_budget``
(:mod:`nnunet_voco.trainers.training_budget`), ``voco_seed_from_fold``, ``voco_test_time_mirroring``.
Inference (``nnUNetv2_predict``) and model export use nnU-Net's own checkpoint: no VoCo file needed.
"""
from __future__ import annotations

import random

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_voco.checkpoint import unwrap_network
from nnunet_voco.finetune.weights_loading import load_voco_weights
from nnunet_voco.finetune.lr_schedule import WarmupPolyLRScheduler
from nnunet_voco.trainers.start_refusal import refuse_unusable_weights
from nnunet_voco.trainers.training_budget import TrainingBudget

__all__ = ["nnUNetTrainerVoCo", "nnUNetTrainerVoCoScratch"]


class nnUNetTrainerVoCo(nnUNetTrainer):
    """Fine-tunes the VoCo-pretrained encoder of the planned network (PlainConvUNet / ResEnc)."""

    voco_load_weights = True
    voco_encoder_family = "cnn"
    voco_encoder_key = "encoder"
    voco_decoder_first_epochs = 0
    voco_encoder_lr_scale = 1.0
    voco_allow_partial = False
    voco_budget = TrainingBudget()  # nnU-Net's 1000 epochs x 250 iterations, the plans' batch size
    voco_seed_from_fold = False  # True: seed random, numpy and torch with the fold before anything is built
    voco_test_time_mirroring = True  # False: no mirroring in the final validation and nnUNetv2_predict

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        if self.voco_seed_from_fold:
            seed = fold if isinstance(fold, int) else 0  # fold "all": seed 0
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
        super().__init__(plans, configuration, fold, dataset_json, device)
        budget = self.voco_budget
        if budget.epochs is not None:
            self.num_epochs = budget.epochs
        if budget.iterations_per_epoch is not None:
            self.num_iterations_per_epoch = budget.iterations_per_epoch
        if budget.val_iterations_per_epoch is not None:
            self.num_val_iterations_per_epoch = budget.val_iterations_per_epoch
        self.voco_weights = None  # a WeightsChoice found before the network was built; None: look up at start

    @property
    def voco_warmup_epochs(self) -> int:
        """Linear warm-up epochs: the budget's fraction (2%) of this run's epochs, at least one."""
        return self.voco_budget.warmup_epochs(self.num_epochs)

    def _set_batch_size_and_oversample(self):
        super()._set_batch_size_and_oversample()
        if self.voco_budget.batch_size is not None:
            self.batch_size = min(self.batch_size, self.voco_budget.batch_size)

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        out = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if not self.voco_test_time_mirroring:
            self.inference_allowed_mirroring_axes = None  # 8x cheaper inference on CPU
        return out

    def configure_optimizers(self):
        network = unwrap_network(self.network)
        encoder_ids = {id(p) for p in network.get_submodule(self.voco_encoder_key).parameters()}
        groups = [{"name": "encoder", "params": [p for p in network.parameters() if id(p) in encoder_ids]},
                  {"name": "decoder", "params": [p for p in network.parameters() if id(p) not in encoder_ids]}]
        optimizer = torch.optim.SGD(groups, self.initial_lr, weight_decay=self.weight_decay, momentum=0.99,
                                    nesterov=True)
        scheduler = WarmupPolyLRScheduler(optimizer, self.initial_lr, self.num_epochs, self.voco_warmup_epochs,
                                          self.voco_decoder_first_epochs, self.voco_encoder_lr_scale)
        return optimizer, scheduler

    def on_train_start(self):
        if not self.was_initialized:
            self.initialize()
        # Only a fresh run takes the VoCo weights; --c continues from nnU-Net's own checkpoint.
        if self.voco_load_weights and self.current_epoch == 0:
            with refuse_unusable_weights(self):  # none, or untrained: one line, exit 2, no empty fold left
                load_voco_weights(self, self.voco_encoder_family, self.voco_allow_partial, self.voco_weights)
        super().on_train_start()


class nnUNetTrainerVoCoScratch(nnUNetTrainerVoCo):
    """Same network, schedule and budget as :class:`nnUNetTrainerVoCo`, randomly initialised."""

    voco_load_weights = False
