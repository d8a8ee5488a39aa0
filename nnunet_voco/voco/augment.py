"""Independent per-crop augmentation of VoCo crops: drawn once, applied in one pass per crop.

Both official codes augment every crop independently after the overlap targets are computed
(flips and rotations do not change which base a crop overlaps with): flips along each axis and a
rot90 in the first spatial plane with probability 0.2 each, and an intensity shift of +-0.1 with
probability 0.1 (v1) or 0.5 (v2). We add an optional intensity scale and rotate in the two
in-plane axes of nnU-Net's arrays (the non-coarse ones).

The random parameters of all crops are drawn at once on the CPU (:func:`draw_transforms`), so the
result does not depend on where it is applied. Two appliers share them:

* :func:`apply_transforms` (torch, any device, the batch on a GPU): crops with the same spatial
  transform (one of at most 32 flip/rotation combinations) are moved with one gather and one
  scatter, and the intensity change is one fused multiply-add over the batch.
* :func:`transform_into` (numpy, the CPU data workers): flips and rotations of a crop are views
  (negative strides, swapped axes), so each crop is written into its batch slot in a single pass
  straight from the window it was cut from, with the intensity change applied on the way.

Both give identical results for the same parameters: ``out = rot90(flip(x), turns) * scale + shift``.

Notes:
    Intensities here are nnU-Net-normalised (z-scores), not [0, 1]-scaled HU as in the official
    code, so a shift of 0.1 is 0.1 standard deviations of the foreground intensity.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch

from nnunet_voco.voco.presets import DEFAULT_PRESET, PRESETS


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and magnitudes of the per-crop augmentation (0 disables a transform)."""

    flip_prob: float = 0.2  # per axis
    rot90_prob: float = 0.2  # in the two in-plane axes
    shift_prob: float = PRESETS[DEFAULT_PRESET].shift_prob  # additive shift, uniform in [-shift, shift] (v2: 0.5)
    shift: float = 0.1
    scale_prob: float = 0.0  # multiplicative intensity scale, uniform in [1 - scale, 1 + scale]
    scale: float = 0.1


@dataclasses.dataclass(frozen=True)
class CropTransforms:
    """Augmentation parameters of ``N`` crops (CPU tensors).

    Attributes:
        flips: ``(N, 3)`` bool, flip along spatial axis 0, 1, 2.
        turns: ``(N,)`` int64 in 0..3, quarter turns in the in-plane axes (after the flips).
        scale: ``(N,)`` float32 intensity factor (1 = unchanged).
        shift: ``(N,)`` float32 intensity offset (0 = unchanged), added after the scale.
    """

    flips: torch.Tensor
    turns: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor

    def spatial_codes(self) -> torch.Tensor:
        """``(N,)`` int64: flips as bits 0-2 plus 8 * turns (0 = no spatial change)."""
        return (self.flips.long() * torch.tensor([1, 2, 4])).sum(1) + 8 * self.turns


def inplane_square(spatial_shape: Sequence[int], inplane_axes: tuple[int, int]) -> bool:
    """Whether the in-plane axes (0-based among X, Y, Z) of ``spatial_shape`` are equal (quarter turns allowed)."""
    a, b = (spatial_shape[axis] for axis in inplane_axes)
    return a == b


def draw_transforms(n: int, config: AugmentConfig, generator: torch.Generator, square: bool = True) -> CropTransforms:
    """Draw the augmentation of ``n`` crops with one call to the generator.

    Args:
        n: number of crops.
        config: probabilities and magnitudes.
        generator: a CPU ``torch.Generator``.
        square: whether the two in-plane axes have equal sizes; otherwise rot90 uses half turns only.

    Returns:
        The :class:`CropTransforms`.
    """
    u = torch.rand(n, 9, generator=generator)
    flips = u[:, :3] < config.flip_prob
    quarter = (1 + (u[:, 4] * 3).long().clamp(max=2)) if square else torch.full((n,), 2)
    turns = torch.where(u[:, 3] < config.rot90_prob, quarter, 0)
    scale = 1 + (u[:, 5] < config.scale_prob).float() * (u[:, 6] * 2 - 1) * config.scale
    shift = (u[:, 7] < config.shift_prob).float() * (u[:, 8] * 2 - 1) * config.shift
    return CropTransforms(flips, turns, scale, shift)


def apply_transforms(crops: torch.Tensor, transforms: CropTransforms, inplane_axes: tuple[int, int] = (1, 2)) -> torch.Tensor:
    """Apply drawn transforms to a batch of crops (returns a new tensor, on the crops' device).

    Args:
        crops: ``(N, C, X, Y, Z)``.
        transforms: parameters of the ``N`` crops.
        inplane_axes: the two spatial axes (0-based among X, Y, Z) that rot90 rotates in.

    Returns:
        Tensor of the same shape and dtype.
    """
    out = crops.clone()
    a, b = (ax + 2 for ax in inplane_axes)
    codes = transforms.spatial_codes()
    # Parameters live on the CPU; copies to the device are non_blocking (a blocking copy would wait
    # for the device's queue to drain: a host sync per transform).
    for code in torch.unique(codes[codes > 0]).tolist():
        idx = torch.nonzero(codes == code).flatten().to(crops.device, non_blocking=True)
        dims = [axis + 2 for axis in range(3) if code >> axis & 1]
        sel = crops[idx].flip(dims) if dims else crops[idx]
        out[idx] = torch.rot90(sel, code >> 3, dims=(a, b)) if code >> 3 else sel
    shape = (crops.shape[0],) + (1,) * (crops.dim() - 1)
    if bool((transforms.scale != 1).any()):
        out.mul_(transforms.scale.to(out.device, out.dtype, non_blocking=True).view(shape))
    if bool((transforms.shift != 0).any()):
        out.add_(transforms.shift.to(out.device, out.dtype, non_blocking=True).view(shape))
    return out


def augment_crops(
    crops: torch.Tensor, config: AugmentConfig, generator: torch.Generator, inplane_axes: tuple[int, int] = (1, 2)
) -> torch.Tensor:
    """Augment every crop of ``crops`` independently (returns a new tensor).

    Args:
        crops: ``(N, C, X, Y, Z)``.
        config: probabilities and magnitudes.
        generator: a CPU ``torch.Generator`` (random draws happen on the CPU so that the result
            does not depend on the device).
        inplane_axes: the two spatial axes (0-based among X, Y, Z) that rot90 rotates in. A
            quarter turn needs equal sizes on both; otherwise only half turns are used.

    Returns:
        Tensor of the same shape and dtype.
    """
    square = inplane_square(crops.shape[2:], inplane_axes)
    return apply_transforms(crops, draw_transforms(crops.shape[0], config, generator, square=square), inplane_axes)


def transform_into(
    sources: Sequence[np.ndarray], out: np.ndarray, transforms: CropTransforms | None,
    inplane_axes: tuple[int, int] = (1, 2),
) -> np.ndarray:
    """Write ``sources[i]`` transformed into ``out[i]``, one pass per crop (numpy, CPU).

    Args:
        sources: ``N`` arrays ``(C, X, Y, Z)``, typically views into the window they were cut from.
        out: ``(N, C, X, Y, Z)`` float32 destination (e.g. a slot of a shared-memory batch).
        transforms: parameters of the ``N`` crops, or None to copy unchanged.
        inplane_axes: the two spatial axes that rot90 rotates in.

    Returns:
        ``out``.
    """
    if transforms is None:
        for i, src in enumerate(sources):
            np.copyto(out[i], src)
        return out
    a, b = (ax + 1 for ax in inplane_axes)
    # The parameters as numpy / Python values, read once instead of as torch scalars per crop.
    flips, turns, scales, shifts = (transforms.flips.numpy(), transforms.turns.tolist(), transforms.scale.tolist(),
                                    transforms.shift.tolist())
    for i, src in enumerate(sources):
        view = src
        for axis in np.flatnonzero(flips[i]):
            view = np.flip(view, axis + 1)
        if turns[i]:
            view = np.rot90(view, turns[i], axes=(a, b))
        scale, shift = scales[i], shifts[i]
        if scale != 1.0:
            np.multiply(view, np.float32(scale), out=out[i])
        else:
            np.copyto(out[i], view)
        if shift != 0.0:
            out[i] += np.float32(shift)
    return out
