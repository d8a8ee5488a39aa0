"""SYNTHETIC VoCo batches (random crops, exact overlap targets) for tests and benchmarks.

A batch has the layout a :class:`~nnunet_voco.voco.sampling.CropLayout` gives the real loader
(``bases``, ``targets``, ``overlaps``) but random voxel values: it exercises the step, its precision and
its cost without opening a dataset. It lives in the package because the tests and the benchmark scripts
both use it and only the package is importable by both.
"""
from __future__ import annotations

import numpy as np
import torch

from nnunet_voco.voco import geometry


def synthetic_batch(layout, batch_size: int, channels: int, seed: int = 0) -> dict:
    """Random crops and the exact overlap targets of randomly placed target crops."""
    rng = np.random.default_rng(seed)
    crop = tuple(layout.crop_size)
    bases_off = geometry.base_crop_offsets(crop, layout.grid)
    overlaps = np.stack([geometry.overlap_matrix(geometry.sample_target_offsets(layout.window, crop,
                                                                                layout.num_targets, rng),
                                                 bases_off, crop) for _ in range(batch_size)])
    gen = torch.Generator().manual_seed(seed)
    return {"bases": torch.randn((batch_size, layout.num_bases, channels) + crop, generator=gen),
            "targets": torch.randn((batch_size, layout.num_targets, channels) + crop, generator=gen),
            "overlaps": torch.from_numpy(overlaps)}
