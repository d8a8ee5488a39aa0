"""nnU-Net trainers that fine-tune VoCo-pretrained encoders, and their matched from-scratch baselines.

``nnUNetv2_train D 3d_fullres FOLD -tr nnUNetTrainerVoCo [-p nnUNetResEncUNetMPlans]`` builds exactly
the network nnU-Net plans for D, finds the weights ``voco_pretrain`` wrote for the same dataset, plans
and configuration (or ``$nnUNet_voco_weights``; rules in :mod:`nnunet_voco.nnunet.weights_lookup`), checks
that they fit, loads them loudly into the encoder at the start of a fresh training run, and trains
with nnU-Net's recipe plus a learning-rate warm-up (:mod:`nnunet_voco.nnunet.finetune_schedule`).

Defaults and why:
    * ``voco_warmup_epochs = 20`` of 1000 (2%): linear warm-up of nnU-Net's SGD (lr 1e-2, momentum
      0.99) so that the gradients of the random decoder do not overwrite the pretrained encoder in
      the first epochs; afterwards nnU-Net's poly schedule over the remaining epochs.
    * ``voco_decoder_first_epochs = 0``: the encoder trains from the start (set > 0 to freeze it for
      the first epochs; its learning rate is 0 then, so DDP needs no special handling).
    * ``voco_encoder_lr_scale = 1.0``: no lower encoder learning rate by default, because VoCo is
      pretrained on the same data distribution and patch size as fine-tuning.

``nnUNetTrainerVoCoScratch`` is the same network, schedule and budget without weights, so that a
gain is measured fairly. ``_smoke`` variants run 2 epochs of 2 iterations for CPU tests.
Inference (``nnUNetv2_predict``) and model export use nnU-Net's own checkpoint: no VoCo file needed.
"""
from __future__ import annotations

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_voco.checkpoint import unwrap_network
from nnunet_voco.nnunet.finetune import load_voco_weights
from nnunet_voco.nnunet.finetune_schedule import WarmupPolyLRScheduler

__all__ = [
    "nnUNetTrainerVoCo", "nnUNetTrainerVoCo_100epochs", "nnUNetTrainerVoCo_250epochs", "nnUNetTrainerVoCo_500epochs",
    "nnUNetTrainerVoCo_smoke", "nnUNetTrainerVoCoScratch", "nnUNetTrainerVoCoScratch_100epochs",
    "nnUNetTrainerVoCoScratch_250epochs", "nnUNetTrainerVoCoScratch_500epochs", "nnUNetTrainerVoCoScratch_smoke",
]


class nnUNetTrainerVoCo(nnUNetTrainer):
    """Fine-tunes the VoCo-pretrained encoder of the planned network (PlainConvUNet / ResEnc)."""

    voco_load_weights = True
    voco_encoder_family = "cnn"
    voco_encoder_key = "encoder"
    voco_warmup_epochs = 20
    voco_decoder_first_epochs = 0
    voco_encoder_lr_scale = 1.0
    voco_allow_partial = False

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
            load_voco_weights(self, self.voco_encoder_family, self.voco_allow_partial)
        super().on_train_start()


class nnUNetTrainerVoCoScratch(nnUNetTrainerVoCo):
    """Same network, schedule and budget as :class:`nnUNetTrainerVoCo`, randomly initialised."""

    voco_load_weights = False


def _budget(base: type, epochs: int) -> type:
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        base.__init__(self, plans, configuration, fold, dataset_json, device)
        self.num_epochs = epochs

    name = f"{base.__name__}_{epochs}epochs"
    return type(name, (base,), {"__init__": __init__, "voco_warmup_epochs": max(1, epochs // 50),
                                "__module__": __name__, "__qualname__": name,
                                "__doc__": f"{base.__name__} with {epochs} epochs (warm-up {max(1, epochs // 50)})."})


nnUNetTrainerVoCo_100epochs = _budget(nnUNetTrainerVoCo, 100)
nnUNetTrainerVoCo_250epochs = _budget(nnUNetTrainerVoCo, 250)
nnUNetTrainerVoCo_500epochs = _budget(nnUNetTrainerVoCo, 500)
nnUNetTrainerVoCoScratch_100epochs = _budget(nnUNetTrainerVoCoScratch, 100)
nnUNetTrainerVoCoScratch_250epochs = _budget(nnUNetTrainerVoCoScratch, 250)
nnUNetTrainerVoCoScratch_500epochs = _budget(nnUNetTrainerVoCoScratch, 500)


class _SmokeMixin:
    """2 epochs x 2 iterations, 1 validation iteration, no mirroring at inference: for CPU tests."""

    voco_warmup_epochs = 1

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 2, 2, 1

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        out = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return out


class nnUNetTrainerVoCo_smoke(_SmokeMixin, nnUNetTrainerVoCo):
    """CPU smoke variant of :class:`nnUNetTrainerVoCo`."""


class nnUNetTrainerVoCoScratch_smoke(_SmokeMixin, nnUNetTrainerVoCoScratch):
    """CPU smoke variant of :class:`nnUNetTrainerVoCoScratch`."""
