"""Read VoCo windows from nnU-Net preprocessed cases and cut them into base and target crops.

A window of ``grid * crop_size`` voxels is placed in a case, only that region is read from the
memory-mapped array (blosc2 or numpy, through nnU-Net's dataset classes), and it is cut into the
base-crop grid plus ``num_targets`` randomly placed target crops with their overlap targets
(:mod:`nnunet_voco.voco.geometry`). Cases smaller than the window are padded. Crops are views into the
window (:func:`crop_views`); :func:`cut_crops` is the one place that copies them out, each crop once,
augmented on the way when transforms are given. The data workers (:mod:`nnunet_voco.nnunet.loader`),
the held-out monitor (:mod:`nnunet_voco.voco.monitor`), the benchmarks and the tests all cut through it
(the workers by way of :meth:`WindowSampler.sample`).

Window placement is biased towards the foreground: with probability ``foreground_probability`` the
window is centred (with jitter) on a random voxel of ``properties["class_locations"]`` that nnU-Net
stores for every labelled class (the unlabelled pools of ``voco_preprocess_unlabeled`` store a body
mask there), otherwise it is placed uniformly. This keeps base crops from being mostly air or
padding, which the official code handles with a foreground crop of the whole volume.

Notes:
    Padding uses the minimum of the region that was read (per channel): after nnU-Net's CT
    normalisation that is the clipped air value, so padding looks like air rather than like the
    mean tissue intensity that nnU-Net's zero padding of z-scored data would produce.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import numpy as np
import torch

from nnunet_voco.voco import geometry
from nnunet_voco.voco.augment import AugmentConfig, CropTransforms, draw_transforms, inplane_square, transform_into


@dataclasses.dataclass(frozen=True)
class CropLayout:
    """Crop size, base grid and number of target crops of one VoCo sample."""

    crop_size: tuple[int, int, int]
    grid: tuple[int, int, int]
    num_targets: int

    @property
    def window(self) -> tuple[int, int, int]:
        return geometry.window_size(self.crop_size, self.grid)

    @property
    def num_bases(self) -> int:
        return int(np.prod(self.grid))

    @functools.cached_property
    def base_offsets(self) -> np.ndarray:
        """``(K, 3)`` lowest corners of the base crops (x-major), computed once per layout (read-only)."""
        offsets = geometry.base_crop_offsets(self.crop_size, self.grid)
        offsets.flags.writeable = False
        return offsets


def _class_locations(properties: dict) -> list[np.ndarray]:
    locations = properties.get("class_locations") or {}
    return [np.asarray(v) for v in locations.values() if v is not None and len(v)]


def window_origin(
    shape: Sequence[int], window: Sequence[int], properties: dict, foreground_probability: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Lowest corner of the window in case coordinates (negative where the case is padded).

    Args:
        shape: spatial shape of the case ``(X, Y, Z)``.
        window: window edge per axis.
        properties: the case's nnU-Net properties (``class_locations`` is used if present).
        foreground_probability: probability of centring the window on a foreground voxel.
        rng: generator.

    Returns:
        Integer array ``(3,)``; each entry lies in ``[min(0, X - W), max(0, X - W)]``.
    """
    shape, window = np.asarray(shape), np.asarray(window)
    low, high = np.minimum(0, shape - window), np.maximum(0, shape - window)
    locations = _class_locations(properties)
    if locations and rng.random() < foreground_probability:
        voxels = locations[rng.integers(len(locations))]
        centre = voxels[rng.integers(len(voxels))][-3:]
        jitter = rng.integers(-(window // 4), window // 4 + 1)
        origin = centre - window // 2 + jitter
    else:
        origin = rng.integers(low, high + 1)
    return np.clip(origin, low, high).astype(np.int64)


def padding_share(shape: Sequence[int], origin: np.ndarray, window: Sequence[int]) -> float:
    """Share of the window's voxels that lie outside a case of spatial ``shape`` (padding)."""
    lo = np.maximum(np.asarray(origin), 0)
    hi = np.minimum(np.asarray(origin) + np.asarray(window), np.asarray(shape))
    inside = float(np.prod(np.clip(hi - lo, 0, None)))
    return 1.0 - inside / float(np.prod(window))


def read_window(data, origin: np.ndarray, window: Sequence[int]) -> np.ndarray:
    """Read ``data[:, origin:origin + window]`` (only that region) and pad what lies outside.

    Args:
        data: ``(C, X, Y, Z)`` array-like supporting slicing (blosc2 NDArray, numpy memmap).
        origin: lowest corner, may be negative.
        window: window edge per axis.

    Returns:
        float32 array ``(C, *window)``.
    """
    shape = np.asarray(data.shape[1:])
    lo = np.maximum(origin, 0)
    hi = np.minimum(origin + np.asarray(window), shape)
    region = np.asarray(data[(slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi))], dtype=np.float32)
    before = lo - origin
    after = np.asarray(window) - before - (hi - lo)
    if not before.any() and not after.any():
        return region
    fill = region.reshape(region.shape[0], -1).min(axis=1) if region.size else np.zeros(region.shape[0])
    out = np.empty((region.shape[0],) + tuple(int(w) for w in window), dtype=np.float32)
    out[...] = fill.astype(np.float32)[:, None, None, None]
    out[(slice(None),) + tuple(slice(int(b), int(b) + int(h - l)) for b, l, h in zip(before, lo, hi))] = region
    return out


def crop_views(window_array: np.ndarray, layout: CropLayout, target_offsets: np.ndarray) -> list[np.ndarray]:
    """Views (no copies) of the base crops (x-major order) followed by the target crops.

    Returns:
        ``K + S`` arrays ``(C, *crop)`` that share memory with ``window_array``.
    """
    (cx, cy, cz) = layout.crop_size
    corners = np.concatenate([layout.base_offsets,
                              np.asarray(target_offsets, dtype=np.int64).reshape(-1, 3)])
    return [window_array[:, x:x + cx, y:y + cy, z:z + cz] for x, y, z in corners]


def cut_crops(window_array: np.ndarray, layout: CropLayout, target_offsets: np.ndarray,
              transforms: CropTransforms | None = None,
              inplane_axes: tuple[int, int] = (1, 2)) -> tuple[np.ndarray, np.ndarray]:
    """Split a window into base crops (x-major order) and cut the target crops.

    Every crop is written once, straight from the window into one array of all crops, flipped,
    rotated and intensity-changed on the way when ``transforms`` are given
    (:func:`nnunet_voco.voco.augment.transform_into`).

    Args:
        window_array: ``(C, *window)``.
        layout: crop size, grid and number of targets.
        target_offsets: ``(S, 3)`` lowest corners of the target crops.
        transforms: augmentation of the ``K + S`` crops (bases first), or None.
        inplane_axes: the axes rot90 rotates in.

    Returns:
        ``bases`` ``(K, C, *crop)`` and ``targets`` ``(S, C, *crop)``, float32, contiguous views of
        one ``(K + S, C, *crop)`` array.
    """
    views = crop_views(window_array, layout, target_offsets)
    # numpy memory: freed buffers are reused by malloc, while every fresh torch CPU allocation of
    # this size page-faults anew (measured: 3x the cost of filling it)
    out = np.empty((len(views), window_array.shape[0]) + tuple(layout.crop_size), dtype=np.float32)
    transform_into(views, out, transforms, inplane_axes)
    return out[:layout.num_bases], out[layout.num_bases:]


class WindowSampler:
    """Draws VoCo samples (bases, targets, overlaps) from one or several preprocessed datasets.

    Args:
        sources: :class:`nnunet_voco.nnunet.DatasetSource` objects (cases are pooled uniformly).
        layout: crop size, grid and number of targets.
        foreground_probability: see :func:`window_origin`.
        cases: ``(source index, identifier)`` pairs to draw from; default every case of every source
            (the loop passes the training cases, the held-out monitor the others).
    """

    def __init__(self, sources: Sequence, layout: CropLayout, foreground_probability: float = 0.67,
                 cases: Sequence[tuple[int, str]] | None = None):
        self.sources = list(sources)
        self.layout = layout
        self.foreground_probability = foreground_probability
        all_cases = [(i, ident) for i, s in enumerate(self.sources) for ident in s.identifiers]
        self.cases = list(cases) if cases is not None else all_cases  # (source index, identifier)
        self._datasets: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self.cases)

    def _dataset(self, index: int):
        # Opened lazily per process: nnU-Net dataset objects hold only file names.
        if index not in self._datasets:
            self._datasets[index] = self.sources[index].open()
        return self._datasets[index]

    def sample_window(self, rng: np.random.Generator, num_targets: int | None = None,
                      case: tuple[int, str] | None = None) -> dict:
        """Read one window of a uniformly drawn case and place the target crops in it.

        Only the window is read from the memory-mapped case (never the whole case).

        Args:
            rng: generator.
            num_targets: target crops (default: the layout's).
            case: ``(source index, identifier)`` to read instead of a random case.

        Returns:
            dict with ``window`` ``(C, *window)`` float32, ``target_offsets`` ``(S, 3)``,
            ``overlaps`` ``(S, K)`` (float32, rows sum to 1), ``case`` (str), ``origin`` ``(3,)``
            and ``padding_share`` (float: share of window voxels outside the case, i.e. padding;
            the base crops tile the window, so this is their padding share too).
        """
        source_index, identifier = case if case is not None else self.cases[rng.integers(len(self.cases))]
        data, _, _, properties = self._dataset(source_index).load_case(identifier)
        window = self.layout.window
        origin = window_origin(data.shape[1:], window, properties, self.foreground_probability, rng)
        window_array = read_window(data, origin, window)
        n = self.layout.num_targets if num_targets is None else num_targets
        target_offsets = geometry.sample_target_offsets(window, self.layout.crop_size, n, rng)
        overlaps = geometry.overlap_matrix(target_offsets, self.layout.base_offsets, self.layout.crop_size)
        return {"window": window_array, "target_offsets": target_offsets, "overlaps": overlaps,
                "case": f"{self.sources[source_index].name}/{identifier}", "origin": origin,
                "padding_share": padding_share(data.shape[1:], origin, window)}

    def sample(self, rng: np.random.Generator, augment: AugmentConfig | None = None,
               generator: torch.Generator | None = None, inplane_axes: tuple[int, int] = (1, 2)) -> dict:
        """One VoCo sample from a uniformly drawn case: the window read once, every crop written once.

        This is what the data workers run (:meth:`nnunet_voco.nnunet.loader.VoCoStream.make_sample`).

        Args:
            rng: window and target-placement generator.
            augment: per-crop augmentation, or None for plain copies.
            generator: the CPU ``torch.Generator`` the augmentation draws from (with ``augment``).
            inplane_axes: the axes rot90 rotates in; a quarter turn needs equal crop edges on both.

        Returns:
            dict with ``bases`` ``(K, C, *crop)``, ``targets`` ``(S, C, *crop)`` (float32),
            ``overlaps`` ``(S, K)`` (float32, rows sum to 1), ``case`` (str) and ``padding_share``.
        """
        sample = self.sample_window(rng)
        transforms = None
        if augment is not None:
            transforms = draw_transforms(self.layout.num_bases + len(sample["target_offsets"]), augment, generator,
                                         square=inplane_square(self.layout.crop_size, inplane_axes))
        bases, targets = cut_crops(sample["window"], self.layout, sample["target_offsets"], transforms, inplane_axes)
        return {"bases": bases, "targets": targets, "overlaps": sample["overlaps"], "case": sample["case"],
                "padding_share": sample["padding_share"]}
