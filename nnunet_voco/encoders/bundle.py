"""The encoder contract shared by the CNN and the Swin back-ends of VoCo pre-training.

An :class:`EncoderBundle` is everything the pre-training loop needs to know about an encoder:
the module that produces the per-level feature maps VoCo pools into one embedding, the channels of
those maps, the divisor every crop size must respect, plain-typed metadata written into
``voco_encoder.pth``, and a function that returns the encoder weights in the key space of the
downstream network (the keys :func:`nnunet_voco.checkpoint.transfer_encoder` loads).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch


@dataclasses.dataclass
class EncoderBundle:
    """An encoder for VoCo pre-training and how to save it for the downstream network.

    Attributes:
        module: ``forward(x (N, C, X, Y, Z)) -> list[Tensor]``, one feature map per level (what
            VoCo pools).
        stage_channels: channels of each returned map; the embedding dim is ``sum(stage_channels)``.
        divisor: crop sizes must be multiples of this per axis.
        meta: plain types only: ``encoder_family`` (``"cnn"`` | ``"swin"``), ``architecture``
            (dict), ``key_to_encoder`` (str, submodule of the downstream network whose state dict
            is saved), ``encoder_key_prefixes`` (list[str], relative to that submodule; ``[""]`` =
            all keys), ``keys_to_in_proj`` (list[str], relative, without ``.weight``).
        state_fn: returns the encoder state dict in the key space of ``meta["key_to_encoder"]``.
    """

    module: torch.nn.Module
    stage_channels: list[int]
    divisor: tuple[int, int, int]
    meta: dict
    state_fn: Callable[[], dict]

    @property
    def embedding_dim(self) -> int:
        """Length of the pooled embedding (sum of the stage channels)."""
        return int(sum(self.stage_channels))
