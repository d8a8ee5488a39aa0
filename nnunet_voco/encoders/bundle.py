"""The encoder contract shared by the CNN and the Swin back-ends of VoCo pre-training.

An :class:`EncoderBundle` is everything the pre-training loop needs to know about an encoder:
the module that produces the per-level feature maps VoCo pools into one embedding, the channels of
those maps, which crops the module accepts (its total stride, the smallest edge worth training on,
and any further check the family needs), plain-typed metadata written into ``voco_encoder.pth``,
and a function that returns the encoder weights in the key space of the downstream network (the
keys :func:`nnunet_voco.checkpoint.transfer_encoder` loads).

The run set-up asks the bundle (:meth:`EncoderBundle.fit_layout`, :meth:`EncoderBundle.validate_crop`)
instead of testing the encoder's name or stride, so a new family states its needs here.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import torch

from nnunet_voco.voco import geometry


@dataclasses.dataclass
class EncoderBundle:
    """An encoder for VoCo pre-training and how to save it for the downstream network.

    Attributes:
        module: ``forward(x (N, C, X, Y, Z)) -> list[Tensor]``, one feature map per level (what
            VoCo pools).
        stage_channels: channels of each returned map; the embedding dim is ``sum(stage_channels)``.
        divisor: the total stride per axis: crop sizes must be multiples of it.
        meta: plain types only: ``encoder_family`` (``"cnn"`` | ``"swin"``), ``architecture``
            (dict), ``key_to_encoder`` (str, submodule of the downstream network whose state dict
            is saved), ``encoder_key_prefixes`` (list[str], relative to that submodule; ``[""]`` =
            all keys), ``keys_to_in_proj`` (list[str], relative, without ``.weight``).
        state_fn: returns the encoder state dict in the key space of ``meta["key_to_encoder"]``.
        crop_check: raises ``ValueError`` for a crop size that passes the shared rules (stride,
            deepest map) but that the module still refuses, or None (no family needs one today).
    """

    module: torch.nn.Module
    stage_channels: list[int]
    divisor: tuple[int, int, int]
    meta: dict
    state_fn: Callable[[], dict]
    crop_check: Optional[Callable[[tuple[int, int, int]], None]] = None

    @property
    def embedding_dim(self) -> int:
        """Length of the pooled embedding (sum of the stage channels)."""
        return int(sum(self.stage_channels))

    @property
    def crop_stride(self) -> tuple[int, int, int]:
        """Crop edges must be multiples of this per axis (the encoder's total stride)."""
        return self.divisor

    def validate_crop(self, crop_size: Sequence[int], spacing: Sequence[float] | None = None) -> tuple[int, int, int]:
        """A crop size the encoder accepts, as a tuple: the rules every family shares, then its own.

        Shared (:mod:`nnunet_voco.voco.geometry`): a multiple of the total stride on every axis, and a
        deepest feature map of more than one voxel (instance normalisation needs two positions).

        Args:
            crop_size: crop edge per array axis.
            spacing: the configuration's spacing, to name the axes in messages ("axis 0 (2.5 mm)").

        Raises:
            ValueError: the message names every bad axis, the deepest map, and crops that work.
        """
        crop = geometry.validate_crop_size(crop_size, self.crop_stride, spacing)
        geometry.check_deepest_map(crop, self.crop_stride)
        if self.crop_check is not None:
            self.crop_check(crop)
        return crop

    def fit_layout(self, median_shape: Sequence[float], patch_size: Sequence[int], spacing: Sequence[float],
                   grid: Sequence[int] | None = None) -> tuple[tuple[int, int, int], tuple[int, int, int], str]:
        """The default crop size and grid for this encoder (:func:`~nnunet_voco.voco.geometry.fitted_layout`)."""
        return geometry.fitted_layout(median_shape, patch_size, spacing, self.crop_stride, grid)
