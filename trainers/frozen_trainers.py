"""Frozen-encoder probes: train only the decoder on top of a fixed encoder.

A probe asks how useful the encoder's features are as they are, without fine-tuning hiding the
difference (a fine-tuned encoder can learn what pre-training missed). The matched pair:

    * ``nnUNetTrainerVoCoFrozen``: the VoCo-pretrained encoder, loaded exactly as
      :class:`~nnunet_voco.trainers.voco_trainers.nnUNetTrainerVoCo` loads it (loud, full transfer
      required), then frozen.
    * ``nnUNetTrainerVoCoFrozenScratch``: nnU-Net's random initialisation, frozen.

Both train the decoder (and the segmentation heads) with nnUNetTrainerVoCo's recipe: SGD (lr 1e-2,
Nesterov momentum 0.99), linear warm-up, then poly decay. Frozen means the encoder's parameters have
``requires_grad=False`` and are not in the optimiser (so neither gradients nor weight decay reach
them), and the encoder stays in ``eval()`` mode (norm statistics, if any, are not updated). This is
set up in :meth:`configure_optimizers`, which nnU-Net calls from ``initialize()`` before it loads a
checkpoint, so ``--c`` continuation keeps the encoder frozen too. The ``_smoke`` variants are in
:mod:`nnunet_voco.trainers.smoke_trainers`.
"""
from __future__ import annotations

import torch

from nnunet_voco.checkpoint import unwrap_network
from nnunet_voco.finetune.lr_schedule import WarmupPolyLRScheduler
from nnunet_voco.trainers.voco_trainers import nnUNetTrainerVoCo

__all__ = ["nnUNetTrainerVoCoFrozen", "nnUNetTrainerVoCoFrozenScratch"]


class nnUNetTrainerVoCoFrozen(nnUNetTrainerVoCo):
    """Trains only the decoder of the planned network on top of the frozen VoCo-pretrained encoder."""

    voco_load_weights = True

    def _encoder(self) -> torch.nn.Module:
        return unwrap_network(self.network).get_submodule(self.voco_encoder_key)

    def configure_optimizers(self):
        network, encoder = unwrap_network(self.network), self._encoder()
        encoder.requires_grad_(False)
        decoder = [p for p in network.parameters() if p.requires_grad]  # heads included; shared modules once
        frozen = list(encoder.parameters())
        if not decoder or not frozen:
            raise RuntimeError(f"VoCo: cannot freeze {self.voco_encoder_key!r} of {type(network).__name__}: "
                               f"{len(frozen)} encoder and {len(decoder)} trainable tensors; expected both > 0")
        self.print_to_log_file(
            f"VoCo: encoder frozen ({len(frozen)} tensors, {sum(p.numel() for p in frozen)} parameters); training "
            f"{len(decoder)} decoder tensors ({sum(p.numel() for p in decoder)} parameters)")
        optimizer = torch.optim.SGD([{"name": "decoder", "params": decoder}], self.initial_lr,
                                    weight_decay=self.weight_decay, momentum=0.99, nesterov=True)
        scheduler = WarmupPolyLRScheduler(optimizer, self.initial_lr, self.num_epochs, self.voco_warmup_epochs)
        return optimizer, scheduler

    def on_train_epoch_start(self):
        super().on_train_epoch_start()  # puts the whole network in train mode
        self._encoder().eval()


class nnUNetTrainerVoCoFrozenScratch(nnUNetTrainerVoCoFrozen):
    """Same as :class:`nnUNetTrainerVoCoFrozen` with nnU-Net's random encoder initialisation, frozen."""

    voco_load_weights = False

