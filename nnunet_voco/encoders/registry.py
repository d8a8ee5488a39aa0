"""The encoder families ``voco_pretrain --encoder`` offers, by name, and the one function that builds them.

``"plans"`` is the CNN nnU-Net plans for the dataset (PlainConvUNet / ResEnc M/L/XL), ``swin_b``,
``swin_l`` and ``swin_h`` are MONAI SwinUNETR-v2 encoders of feature size 48/96/192. The families'
modules are imported only when one is built, so the names cost nothing to import (``--help``).
"""
from __future__ import annotations

ENCODER_CHOICES = ("plans", "swin_b", "swin_l", "swin_h")


def build_encoder(name: str, plans_manager, configuration_manager, num_input_channels: int,
                  swin_feature_size: int | None = None, gradient_checkpointing: bool = False):
    """Build the :class:`~nnunet_voco.encoders.bundle.EncoderBundle` named ``name``.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    if name == "plans":
        from nnunet_voco.encoders.cnn import build_cnn_encoder

        return build_cnn_encoder(plans_manager, configuration_manager, num_input_channels)
    if name in ENCODER_CHOICES:
        from nnunet_voco.encoders.swin import SWIN_SIZES, build_swin_encoder

        return build_swin_encoder(num_input_channels, swin_feature_size or SWIN_SIZES[name], gradient_checkpointing)
    raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODER_CHOICES)}")
