"""Independent per-crop augmentation of VoCo crops, as batched tensor operations.

Both official codes augment every crop independently after the overlap targets are computed
(flips and rotations do not change which base a crop overlaps with): flips along each axis and a
rot90 in the first spatial plane with probability 0.2 each, and an intensity shift of +-0.1 with
probability 0.1 (v1) or 0.5 (v2). We add an optional intensity scale and rotate in the two
in-plane axes of nnU-Net's arrays (the non-coarse ones). Each operation is applied to the selected
subset of the batch at once (one indexing op per transform), so the cost scales with the number of
crops that are transformed, and it runs on whatever device the tensor lives on.

Notes:
    Intensities here are nnU-Net-normalised (z-scores), not [0, 1]-scaled HU as in the official
    code, so a shift of 0.1 is 0.1 standard deviations of the foreground intensity.
"""
from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and magnitudes of the per-crop augmentation (0 disables a transform)."""

    flip_prob: float = 0.2  # per axis
    rot90_prob: float = 0.2  # in the two in-plane axes
    shift_prob: float = 0.5  # additive intensity shift, uniform in [-shift, shift]
    shift: float = 0.1
    scale_prob: float = 0.0  # multiplicative intensity scale, uniform in [1 - scale, 1 + scale]
    scale: float = 0.1


def _chosen(n: int, prob: float, generator: torch.Generator) -> torch.Tensor:
    return torch.nonzero(torch.rand(n, generator=generator) < prob).flatten()


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
    out = crops.clone()
    n = out.shape[0]
    device = out.device
    for axis in range(3):
        idx = _chosen(n, config.flip_prob, generator).to(device)
        if idx.numel():
            out[idx] = out[idx].flip(axis + 2)
    a, b = (ax + 2 for ax in inplane_axes)
    idx = _chosen(n, config.rot90_prob, generator)
    if idx.numel():
        square = out.shape[a] == out.shape[b]
        k = torch.randint(1, 4, (idx.numel(),), generator=generator) if square else torch.full((idx.numel(),), 2)
        for turns in (1, 2, 3):
            sel = idx[k == turns].to(device)
            if sel.numel():
                out[sel] = torch.rot90(out[sel], turns, dims=(a, b))
    shape = (n,) + (1,) * (out.dim() - 1)
    if config.scale_prob > 0:
        use = (torch.rand(n, generator=generator) < config.scale_prob).float()
        factor = 1 + use * (torch.rand(n, generator=generator) * 2 - 1) * config.scale
        out.mul_(factor.to(device, out.dtype).view(shape))
    if config.shift_prob > 0:
        use = (torch.rand(n, generator=generator) < config.shift_prob).float()
        offset = use * (torch.rand(n, generator=generator) * 2 - 1) * config.shift
        out.add_(offset.to(device, out.dtype).view(shape))
    return out
