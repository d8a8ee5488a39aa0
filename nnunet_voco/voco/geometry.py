"""VoCo crop geometry: the base-crop grid, target crops and their overlap targets.

VoCo [0, 1] cuts a *window* from a volume, splits it into a fixed grid of non-overlapping *base
crops*, and places a few *target crops* of the same size anywhere inside the window. The training
target of a target crop is its fractional overlap with every base crop.

All functions are pure numpy: no torch, no I/O, and randomness only through an explicit
``numpy.random.Generator``.

Conventions (written down once, here):
    * Axes follow nnU-Net's preprocessed arrays, ``(X, Y, Z)`` = the three spatial axes of
      ``(C, X, Y, Z)``, in the order of the plans' ``patch_size`` and ``spacing``. nnU-Net transposes
      cases so that the axis with the coarsest spacing usually comes first, so these are not the
      image's x, y, z: messages name them by index and spacing, "axis 0 (2.5 mm)"
      (:func:`axis_label`), and ``--crop_size`` / ``--grid`` take them in that order.
    * Base crops are ordered x-major, then y, then z: base ``k = (ix * gy + iy) * gz + iz``.
    * Offsets are integer voxel coordinates of a crop's lowest corner inside the window.

Overlap (3-D generalisation of the official 2-D area ratio): for a target box ``[a, a + c)`` and a
base box ``[b, b + c)`` per axis, ``overlap = prod_axes max(0, min(a, b) + c - max(a, b)) / prod(c)``.
With one grid cell along an axis and crops spanning it, this equals the official in-plane area
ratio (Luffy03/VoCo ``utils/data_utils.py``, Luffy03/Large-Scale-Medical
``Self-supervised/utils/voco_trans.py``), where z is never split.

References:
    [0] Wu, Zhang, Xiong, Chen, "VoCo: A Simple-yet-Effective Volume Contrastive Learning Framework
        for 3D Medical Image Analysis", CVPR 2024, arXiv:2402.17300.
    [1] Wu, Zhang, Chen, "Large-Scale 3D Medical Image Pre-training with Geometric Context Priors",
        TPAMI, arXiv:2410.09890.

Notes:
    The official code hard-codes a 4x4 (v1) or 3x3 (v2) in-plane grid of 64^3 crops inside a window
    of 384x384x96 (resized) or 192x192x64 voxels. Here the grid and crop size are parameters and
    the defaults come from the plans and the data (see :func:`fitted_layout`), and targets are sampled
    with inclusive upper bound ``window - crop`` (the official code draws centres from a half-open
    range, so the last offset is never drawn; the difference is one voxel).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def axis_label(axis: int, spacing: Sequence[float] | None = None) -> str:
    """``"axis 0 (2.5 mm)"``: an array axis by its index in the plans' order, with its spacing when known."""
    return f"axis {axis}" + (f" ({float(spacing[axis]):g} mm)" if spacing is not None else "")


def _axes_text(axes: Sequence[int], spacing: Sequence[float] | None = None) -> str:
    labels = [axis_label(a, spacing) for a in axes]
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]


def _voxels(values: Sequence[int]) -> str:
    return " x ".join(str(int(v)) for v in values)


def _as_triplet(values: Sequence[int], name: str) -> tuple[int, int, int]:
    values = tuple(int(v) for v in values)
    if len(values) != 3:
        raise ValueError(f"{name} must have 3 entries (array axes 0, 1, 2), got {values}")
    small = [axis for axis, v in enumerate(values) if v < 1]
    if small:
        raise ValueError(f"{name} must be >= 1 on every axis, got {values} ({_axes_text(small)} below 1)")
    return values  # type: ignore[return-value]


ANISOTROPY_RATIO = 1.5  # coarsest / finest spacing above which the coarse axis is "through-plane"
MIN_CROP_EDGE = 16  # voxels; see :func:`fitted_layout`


def unsplit_axis(spacing: Sequence[float], median_shape: Sequence[float] | None = None) -> int:
    """The axis the VoCo grid leaves whole (1 cell); the other two are the "in-plane" axes.

    Anisotropic spacing (coarsest / finest > ``ANISOTROPY_RATIO``): the coarse axis, as in VoCo's
    official code, which never splits z. Isotropic spacing: the axis with the smallest median
    extent in voxels (the other two have the most room for a 3x3 grid); without a median shape, the
    first axis (nnU-Net puts the axis it treats as out-of-plane first).
    """
    spacing = np.asarray(spacing, dtype=float)
    if spacing.max() > ANISOTROPY_RATIO * spacing.min():
        return int(np.argmax(spacing))
    if median_shape is not None:
        return int(np.argmin(np.asarray(median_shape, dtype=float)))
    return 0


def default_grid(spacing: Sequence[float], cells: int = 3,
                 median_shape: Sequence[float] | None = None) -> tuple[int, int, int]:
    """The TPAMI grid: ``cells`` x ``cells`` over the two in-plane axes, 1 on the other one.

    Args:
        spacing: voxel spacing of the configuration, in the axis order of the preprocessed arrays.
        cells: number of base crops along each in-plane axis (3 in VoCo v2, 4 in v1).
        median_shape: median case shape; picks the whole axis of isotropic data (see
            :func:`unsplit_axis`).

    Returns:
        The grid ``(gx, gy, gz)``.
    """
    whole = unsplit_axis(spacing, median_shape)
    return tuple(1 if axis == whole else cells for axis in range(3))  # type: ignore[return-value]


def inplane_axes(grid: Sequence[int], spacing: Sequence[float],
                 median_shape: Sequence[float] | None = None) -> tuple[int, int]:
    """The two axes augmentation rotates in (rot90): the plane the grid splits.

    A grid that splits exactly two axes names them; any other grid (one split axis, or all three)
    falls back to the two axes other than :func:`unsplit_axis`, the same isotropy test that chose
    the default grid.

    Args:
        grid: the base grid ``(gx, gy, gz)``.
        spacing: voxel spacing of the configuration.
        median_shape: median case shape (see :func:`unsplit_axis`).

    Returns:
        Two axis indices in increasing order.
    """
    split = tuple(a for a in range(3) if int(grid[a]) > 1)
    if len(split) == 2:
        return split  # type: ignore[return-value]
    whole = unsplit_axis(spacing, median_shape)
    return tuple(a for a in range(3) if a != whole)  # type: ignore[return-value]


def _fit_edge(room: float, cells: int, cap: int, divisor: int, minimum: int) -> int:
    """Largest multiple of ``divisor`` that is <= ``cap`` and lets ``cells`` crops fit into ``room``."""
    edge = min(int(cap), int(room // cells)) // divisor * divisor
    return max(edge, minimum)


def min_crop_edges(divisor: Sequence[int], min_edge: int = MIN_CROP_EDGE) -> tuple[int, int, int]:
    """Smallest crop edge per axis: a multiple of the stride, at least ``min_edge`` voxels."""
    return tuple(int(-(-max(int(d), min_edge) // int(d)) * int(d)) for d in divisor)  # type: ignore[return-value]


def fitted_layout(median_shape: Sequence[float], patch_size: Sequence[int], spacing: Sequence[float],
                  divisor: Sequence[int], grid: Sequence[int] | None = None, cells: Sequence[int] = (3, 2),
                  min_edge: int = MIN_CROP_EDGE) -> tuple[tuple[int, int, int], tuple[int, int, int], str]:
    """Default crop size and grid: the window (grid x crop) fits inside the median case.

    Rule (DESIGN.md section 3): the grid splits the two in-plane axes (:func:`unsplit_axis`) into
    3 x 3 cells (the TPAMI recipe), 1 cell on the other axis. Each crop edge is the largest multiple
    of the encoder's total stride that is at most the plans' patch size and lets the cells fit into
    the median case shape, so that base crops hold data, not padding. When 3 cells would make an
    in-plane crop smaller than the minimum, 2 cells are used; when even that does not fit, the crops
    keep the minimum and the window is padded (the loop logs the padding share).

    Why crops may be smaller than the fine-tuning patch: the CNN encoder is fully convolutional, so
    it accepts any crop whose edges its strides divide, and the weights transfer unchanged. The
    minimum edge, ``max(stride, min_edge)`` rounded up to the stride (but never above the patch), keeps every stage at least one
    voxel wide (stride) and the first stages' 3x3x3 receptive fields mostly inside the crop
    (``min_edge`` = 16 voxels); crops whose deepest map would be a single voxel (instance norm has
    nothing to normalise there; :func:`check_deepest_map` refuses such a crop when it is given) get the
    whole axis doubled, even where that pads the window.

    Args:
        median_shape: median spatial case shape (preprocessed axis order).
        patch_size: the configuration's patch size (upper bound of every crop edge, except for the
            1-voxel-deepest-map doubling above).
        spacing: the configuration's spacing.
        divisor: the encoder's total stride per axis (crop edges must be multiples of it); the
            encoder declares it (``EncoderBundle.crop_stride``; ``EncoderBundle.fit_layout`` calls
            this function).
        grid: a fixed grid (``--grid``); only the crop size is fitted then.
        cells: cells per in-plane axis to try, in order.
        min_edge: minimum crop edge in voxels (before rounding up to the stride).

    Returns:
        ``(crop_size, grid, rule)``: ``rule`` is a one-line account of how they were chosen.
    """
    median = np.asarray(median_shape, dtype=float)
    divisor = tuple(int(d) for d in divisor)
    cap = tuple(max(d, int(p) // d * d) for p, d in zip(patch_size, divisor))
    minimum = tuple(min(m, c) for m, c in zip(min_crop_edges(divisor, min_edge), cap))  # never above the patch
    candidates = [tuple(int(g) for g in grid)] if grid is not None else [
        default_grid(spacing, n, median) for n in cells]
    for i, g in enumerate(candidates):
        fits = all(median[a] // g[a] >= minimum[a] for a in range(3) if g[a] > 1)
        if fits or i == len(candidates) - 1:
            break
    crop = [_fit_edge(median[a], g[a], cap[a], divisor[a], minimum[a]) for a in range(3)]
    if int(np.prod(deepest_map(crop, divisor))) < 2:  # a 1-voxel deepest map (see check_deepest_map)
        crop[int(np.argmin(g))] *= 2  # even if the window then exceeds the median case (padding is logged)
    crop_t = tuple(int(c) for c in crop)
    padded = [a for a in range(3) if g[a] * crop_t[a] > median[a]]
    rule = (f"window = grid x crop fitted to the median case {tuple(int(m) for m in median)}: grid {g} "
            f"({'given' if grid is not None else f'{max(g)}x{max(g)} over the in-plane axes'}), each crop edge the "
            f"largest multiple of the stride {divisor} <= patch {tuple(int(p) for p in patch_size)} that fits, "
            f"minimum {minimum}")
    if padded:
        rule += f"; the window exceeds the median case on {_axes_text(padded, spacing)} (padded)"
    return crop_t, g, rule  # type: ignore[return-value]


def validate_crop_size(crop_size: Sequence[int], divisor: Sequence[int],
                       spacing: Sequence[float] | None = None) -> tuple[int, int, int]:
    """Check that the encoder's total stride divides the crop size on every axis.

    Args:
        crop_size: crop edge per axis, in voxels.
        divisor: product of the encoder's strides per axis.
        spacing: the configuration's spacing, to name the axes in the message (optional).

    Returns:
        The crop size as a tuple of ints.

    Raises:
        ValueError: naming every axis that cannot be divided, with a crop size that can.
    """
    crop_size = _as_triplet(crop_size, "crop size")
    divisor = tuple(int(d) for d in divisor)
    bad = [axis for axis, (c, d) in enumerate(zip(crop_size, divisor)) if c % d]
    if bad:
        suggestion = [max(d, int(round(c / d)) * d) if c % d else c for c, d in zip(crop_size, divisor)]
        details = ", ".join(f"{crop_size[a]} on {axis_label(a, spacing)}" for a in bad)
        raise ValueError(
            f"crop size {_voxels(crop_size)} is not divisible by the encoder's total stride {_voxels(divisor)}: "
            f"{details}; pass --crop_size {' '.join(map(str, suggestion))} (the nearest multiples of the stride)"
        )
    return crop_size


def deepest_map(crop_size: Sequence[int], divisor: Sequence[int]) -> tuple[int, int, int]:
    """Size of the encoder's deepest feature map for a crop: ``crop // total stride`` per axis."""
    return tuple(int(c) // int(d) for c, d in zip(crop_size, divisor))  # type: ignore[return-value]


def check_deepest_map(crop_size: Sequence[int], divisor: Sequence[int]) -> None:
    """Refuse a crop whose deepest feature map is a single voxel (the rule of every encoder family).

    Instance normalisation (nnU-Net's CNNs, SwinUNETR's residual blocks) normalises each channel over
    the spatial positions of a map; one position leaves nothing to normalise, and PyTorch stops at the
    first training step ("Expected more than 1 spatial element when training"). Two voxels on any one
    axis suffice, so the smallest crops that work double one axis of the given crop.
    :func:`fitted_layout` applies the same rule to the crops it chooses.

    Raises:
        ValueError: naming the crop, the deepest map it gives and the smallest crops that work.
    """
    deepest = deepest_map(crop_size, divisor)
    if int(np.prod(deepest)) > 1:
        return
    options = [" ".join(str(int(c) * (2 if a == axis else 1)) for a, c in enumerate(crop_size)) for axis in range(3)]
    raise ValueError(
        f"crop size {_voxels(crop_size)} leaves the encoder's deepest feature map {_voxels(deepest)} voxel (total "
        f"stride {_voxels(divisor)}), a single position that instance normalisation cannot train on; the smallest "
        f"crops that work double one axis: --crop_size {options[0]}, {options[1]} or {options[2]}"
    )


def window_size(crop_size: Sequence[int], grid: Sequence[int]) -> tuple[int, int, int]:
    """Window edge per axis: ``grid * crop_size``."""
    crop_size = _as_triplet(crop_size, "crop size")
    grid = _as_triplet(grid, "grid")
    return tuple(g * c for g, c in zip(grid, crop_size))  # type: ignore[return-value]


def base_crop_offsets(crop_size: Sequence[int], grid: Sequence[int]) -> np.ndarray:
    """Lowest corners of the base crops, ordered x-major, then y, then z.

    Returns:
        Integer array of shape ``(gx * gy * gz, 3)``.
    """
    crop_size = np.asarray(_as_triplet(crop_size, "crop size"))
    grid = _as_triplet(grid, "grid")
    cells = np.stack(np.meshgrid(*[np.arange(g) for g in grid], indexing="ij"), axis=-1)
    return (cells.reshape(-1, 3) * crop_size).astype(np.int64)


def sample_target_offsets(
    window: Sequence[int], crop_size: Sequence[int], n: int, rng: np.random.Generator
) -> np.ndarray:
    """Draw ``n`` target-crop corners uniformly so that each crop lies inside the window.

    Args:
        window: window edge per axis.
        crop_size: crop edge per axis.
        n: number of target crops.
        rng: the generator to draw from (no global state is used).

    Returns:
        Integer array of shape ``(n, 3)`` with entries in ``[0, window - crop_size]``.

    Raises:
        ValueError: if the crop does not fit into the window on some axis.
    """
    window = np.asarray(_as_triplet(window, "window"))
    crop_size = np.asarray(_as_triplet(crop_size, "crop size"))
    too_big = [int(a) for a in np.flatnonzero(crop_size > window)]
    if too_big:
        raise ValueError(
            f"crop size {_voxels(crop_size)} exceeds the window {_voxels(window)} on {_axes_text(too_big)}; "
            f"use a grid of at least 1 on every axis"
        )
    return rng.integers(0, window - crop_size + 1, size=(int(n), 3)).astype(np.int64)


def overlap_matrix(
    target_offsets: np.ndarray, base_offsets: np.ndarray, crop_size: Sequence[int]
) -> np.ndarray:
    """Fractional volume overlap of every target crop with every base crop.

    Args:
        target_offsets: ``(S, 3)`` lowest corners of the target crops.
        base_offsets: ``(K, 3)`` lowest corners of the base crops.
        crop_size: crop edge per axis (targets and bases have the same size).

    Returns:
        float32 array ``(S, K)``. Rows sum to 1 for targets inside a window tiled by the bases.
    """
    crop = np.asarray(_as_triplet(crop_size, "crop size"), dtype=np.int64)
    a = np.asarray(target_offsets, dtype=np.int64)[:, None, :]  # (S, 1, 3)
    b = np.asarray(base_offsets, dtype=np.int64)[None, :, :]  # (1, K, 3)
    per_axis = np.clip(np.minimum(a, b) + crop - np.maximum(a, b), 0, None)  # (S, K, 3)
    return (per_axis.prod(axis=-1) / crop.prod()).astype(np.float32)
