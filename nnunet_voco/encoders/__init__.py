"""Encoder adapters: build an encoder from nnU-Net plans and return its per-level feature maps.

``build_encoder(name, ...)`` (:mod:`~nnunet_voco.encoders.registry`) is the single entry point of the
pre-training program; one module per family (:mod:`~nnunet_voco.encoders.cnn`,
:mod:`~nnunet_voco.encoders.swin`) and their shared contract (:mod:`~nnunet_voco.encoders.bundle`).
This file only re-exports.
"""
from nnunet_voco.encoders.registry import ENCODER_CHOICES, build_encoder

__all__ = ["ENCODER_CHOICES", "build_encoder"]
