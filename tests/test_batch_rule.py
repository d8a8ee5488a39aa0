"""The default volumes-per-step rule of voco_pretrain (resolve_batch_size), pinned by hand."""
import types

import pytest

from nnunet_voco.pretrain.config import PretrainConfig
from nnunet_voco.pretrain.run_setup import resolve_batch_size
from nnunet_voco.voco.sampling import CropLayout


@pytest.mark.parametrize("plans_batch, patch, crop, grid, targets, expected", [
    # (S + K) / 2 * crop_voxels / patch_voxels supervised samples per volume; floor, at least 1
    (2, (16, 48, 48), (16, 16, 16), (1, 3, 3), 2, 3),     # 5.5 * 1/9 = 0.61 -> 2 // 0.61 = 3
    (2, (96, 160, 160), (96, 96, 96), (1, 3, 3), 2, 1),   # 5.5 * 0.36 = 1.98 -> 1
    (12, (80, 192, 160), (80, 160, 160), (1, 3, 3), 2, 2),  # 5.5 * 0.83 = 4.58 -> 2
    (2, (128, 128, 128), (128, 128, 128), (1, 3, 3), 2, 1),  # more than the plans' batch: still 1
])
def test_default_batch_size(plans_batch, patch, crop, grid, targets, expected):
    cm = types.SimpleNamespace(batch_size=plans_batch, patch_size=list(patch))
    layout = CropLayout(crop, grid, targets)
    assert resolve_batch_size(PretrainConfig(datasets=("1",)), cm, layout) == expected


def test_explicit_batch_size_wins():
    cm = types.SimpleNamespace(batch_size=2, patch_size=[16, 48, 48])
    config = PretrainConfig(datasets=("1",), batch_size=5)
    assert resolve_batch_size(config, cm, CropLayout((16, 16, 16), (1, 3, 3), 2)) == 5
