"""The CNN encoder of the network nnU-Net builds from the plans (PlainConvUNet, ResEnc M/L/XL).

VoCo pre-trains exactly the encoder that fine-tuning will use: the full network is built with
``nnUNetTrainer.build_network_architecture`` from the same plans, configuration and channel count,
and ``network.encoder`` (a ``PlainConvEncoder`` or ``ResidualEncoder`` of
dynamic-network-architectures returning its skips) is kept. The saved state dict is therefore
``network.encoder.state_dict()``, key for key what the downstream network expects under
``encoder.``.
"""
from __future__ import annotations

import numpy as np
import torch

from nnunet_voco.encoders.bundle import EncoderBundle
from nnunet_voco.nnunet import build_plans_network

KEY_TO_ENCODER = "encoder"


def _plain_kwargs(kwargs: dict) -> dict:
    from nnunet_voco.checkpoint import to_plain

    return to_plain(kwargs)


def total_strides(configuration_manager) -> tuple[int, int, int]:
    """Product of the encoder's strides per axis (crop sizes must be multiples of it)."""
    strides = np.asarray(configuration_manager.pool_op_kernel_sizes, dtype=int).reshape(-1, 3)
    return tuple(int(v) for v in strides.prod(axis=0))


def build_cnn_encoder(plans_manager, configuration_manager, num_input_channels: int) -> EncoderBundle:
    """Encoder bundle of the planned CNN.

    Args:
        plans_manager: nnU-Net ``PlansManager``.
        configuration_manager: its ``ConfigurationManager`` for the chosen configuration.
        num_input_channels: input channels of the dataset.

    Returns:
        An :class:`EncoderBundle` whose module returns one map per encoder stage.

    Raises:
        ValueError: the planned network has no ``encoder`` that returns per-stage skips.
    """
    network = build_plans_network(plans_manager, configuration_manager, num_input_channels)
    encoder = getattr(network, KEY_TO_ENCODER, None)
    if encoder is None or not getattr(encoder, "return_skips", False):
        raise ValueError(
            f"network {configuration_manager.network_arch_class_name} has no encoder returning per-stage "
            f"features; VoCo supports PlainConvUNet and ResidualEncoderUNet plans (or --encoder swin_b)"
        )
    stage_channels = [int(c) for c in encoder.output_channels]
    in_proj = [k[len(KEY_TO_ENCODER) + 1:] for k in getattr(network, "keys_to_in_proj", ())]
    meta = {
        "encoder_family": "cnn",
        "architecture": {
            "network_class_name": configuration_manager.network_arch_class_name,
            "arch_kwargs": _plain_kwargs(configuration_manager.network_arch_init_kwargs),
            "arch_kwargs_requires_import": list(configuration_manager.network_arch_init_kwargs_req_import),
        },
        "key_to_encoder": KEY_TO_ENCODER,
        "encoder_key_prefixes": [""],
        "keys_to_in_proj": in_proj,
    }
    return EncoderBundle(
        module=encoder,
        stage_channels=stage_channels,
        divisor=total_strides(configuration_manager),
        meta=meta,
        state_fn=encoder.state_dict,
    )
