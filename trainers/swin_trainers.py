"""nnU-Net trainers that fine-tune a VoCo-pretrained SwinUNETR-v2, and the matched baseline.

``voco_pretrain -d D --encoder swin_b`` (or ``voco_import_weights`` + ``nnUNet_voco_weights``), then
``nnUNetv2_train D 3d_fullres FOLD -tr nnUNetTrainerVoCoSwin``; ``nnUNetv2_predict ... -tr
nnUNetTrainerVoCoSwin`` needs no VoCo file.

What differs from :class:`~nnunet_voco.trainers.voco_trainers.nnUNetTrainerVoCo`:
    * Network: MONAI SwinUNETR-v2 (:mod:`nnunet_voco.encoders.swin`), any number of input channels
      and classes, arrays fed as ``(B, C, X, Y, Z)`` without permutation or resizing.
    * Patch size: rounded per axis to a multiple of 32 (:func:`swin_patch_size`) in ``__init__``,
      before nnU-Net reads the plans, so the ``plans.json`` nnU-Net copies into the output folder
      carries it and ``nnUNetv2_predict``'s sliding window uses it. The feature size is written
      into the same configuration (``voco_swin_feature_size``), so ``build_network_architecture``
      (a classmethod, called on the class at inference) rebuilds the trained network.
    * Feature size: read from the VoCo weights' metadata (B/L/H or any multiple of 12), else
      ``voco_swin_feature_size`` (48, Swin-B). The weights are looked up once, in ``initialize()``
      before the network is built (``__init__`` reads no file); ``on_train_start`` loads that choice.
    * No deep supervision (one output resolution), as nnU-Net's Primus trainers.
    * Optimiser: AdamW, lr 3e-4, weight decay 1e-5, the official VoCo SwinUNETR fine-tuning values
      (Large-Scale-Medical Downstream/monai); SGD with momentum 0.99 at lr 1e-2, nnU-Net's CNN
      recipe, is unstable for transformers. Schedule: linear warm-up for 2% of the epochs (20 of
      1000), then nnU-Net's poly decay per epoch (the schedule of the CNN VoCo trainers and of
      nnU-Net's Primus trainers; the official MONAI runs use cosine, which differs from poly mainly
      in the last tenth of training). Encoder/decoder parameter groups as in the CNN trainers.
    * Gradient checkpointing stays on together with nnU-Net's default ``torch.compile`` (CUDA): MONAI
      checkpoints without re-entrance, which dynamo traces; compiled output and gradients equal the
      eager ones (``tests/test_swin_compile.py``; the one graph break is MONAI's input-size check).
The ``_smoke`` variants are in :mod:`nnunet_voco.trainers.swin_smoke_trainers`.
"""
from __future__ import annotations

import copy

import torch

from nnunet_voco import artifacts
from nnunet_voco.checkpoint import unwrap_network
from nnunet_voco.encoders.swin import SWIN_ENCODER_PREFIXES, SWIN_KEY_TO_ENCODER, build_swin_network, swin_patch_size
from nnunet_voco.finetune.weights_loading import find_trainer_weights
from nnunet_voco.finetune.lr_schedule import WarmupPolyLRScheduler
from nnunet_voco.trainers.voco_trainers import nnUNetTrainerVoCo

__all__ = ["nnUNetTrainerVoCoSwin", "nnUNetTrainerSwinScratch"]

FEATURE_SIZE_KEY = "voco_swin_feature_size"  # written into the plans configuration


def _swin_plans(plans: dict, configuration: str, feature_size: int) -> dict:
    """A copy of ``plans`` whose configuration has a Swin patch size and the feature size."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = copy.deepcopy(plans)
    patch = list(PlansManager(plans).get_configuration(configuration).patch_size)
    entry = plans["configurations"][configuration]
    entry["patch_size"] = list(swin_patch_size(patch))
    entry[FEATURE_SIZE_KEY] = int(feature_size)
    entry["voco_original_patch_size"] = patch
    return plans


class nnUNetTrainerVoCoSwin(nnUNetTrainerVoCo):
    """Fine-tunes a VoCo-pretrained SwinUNETR-v2 encoder (decoder and head trained anew)."""

    voco_encoder_family = "swin"
    voco_encoder_key = SWIN_KEY_TO_ENCODER
    voco_swin_feature_size = 48  # used when no weights are loaded (scratch) or found
    voco_gradient_checkpointing = True  # as the official SwinUNETR runs: memory over speed

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        plans = _swin_plans(plans, configuration, self.voco_swin_feature_size)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr, self.weight_decay = 3e-4, 1e-5
        self.enable_deep_supervision = False

    def initialize(self):
        if not self.was_initialized and self.voco_load_weights:
            self._take_feature_size_from_weights()
        super().initialize()

    def _take_feature_size_from_weights(self) -> None:
        """Look the weights up (the one lookup of this run) and size the network by their metadata."""
        try:
            self.voco_weights = find_trainer_weights(self, self.voco_encoder_family)
        except FileNotFoundError:  # on_train_start raises with the command to run
            return
        meta = self.voco_weights.meta or artifacts.read_meta(self.voco_weights.path)
        architecture = meta.get("architecture") or {}
        feature_size = int(architecture.get("feature_size", self.voco_swin_feature_size))
        # both copies: the configuration manager builds the network, the plans go to plans.json
        self.configuration_manager.configuration[FEATURE_SIZE_KEY] = feature_size
        self.plans_manager.plans["configurations"][self.configuration_name][FEATURE_SIZE_KEY] = feature_size

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> torch.nn.Module:
        """SwinUNETR-v2 with the configuration's feature size; no deep supervision (flag ignored)."""
        feature_size = configuration_manager.configuration.get(FEATURE_SIZE_KEY, cls.voco_swin_feature_size)
        return build_swin_network(num_input_channels, num_output_channels, feature_size,
                                  cls.voco_gradient_checkpointing)

    def configure_optimizers(self):
        network = unwrap_network(self.network)
        prefixes = tuple(f"{SWIN_KEY_TO_ENCODER}.{p}" for p in SWIN_ENCODER_PREFIXES)
        named = list(network.named_parameters())
        groups = [{"name": "encoder", "params": [p for n, p in named if n.startswith(prefixes)]},
                  {"name": "decoder", "params": [p for n, p in named if not n.startswith(prefixes)]}]
        optimizer = torch.optim.AdamW(groups, self.initial_lr, weight_decay=self.weight_decay)
        scheduler = WarmupPolyLRScheduler(optimizer, self.initial_lr, self.num_epochs, self.voco_warmup_epochs,
                                          self.voco_decoder_first_epochs, self.voco_encoder_lr_scale)
        return optimizer, scheduler

    def set_deep_supervision_enabled(self, enabled: bool):
        pass  # one output resolution (as nnU-Net's Primus trainers)


class nnUNetTrainerSwinScratch(nnUNetTrainerVoCoSwin):
    """Same network, patch, optimiser and budget as :class:`nnUNetTrainerVoCoSwin`, no weights."""

    voco_load_weights = False
