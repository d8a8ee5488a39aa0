"""The run set-up resolved once: presets, in-plane axes, the encoder's crop rule, resolve_run itself."""
from __future__ import annotations

import pytest
import torch

from conftest import open_tiny_synthetic
from nnunet_voco.encoders.swin import build_swin_encoder
from nnunet_voco.nnunet.synthetic_datasets import RESENC_M_PLANS
from nnunet_voco.pretrain.config import PretrainConfig
from nnunet_voco.pretrain.distributed import RunContext
from nnunet_voco.pretrain.run_setup import resolve_batch_size, resolve_run
from nnunet_voco.voco import geometry
from nnunet_voco.voco.loss import VoCoLoss
from nnunet_voco.voco.model import VoCoModel
from nnunet_voco.voco.presets import PRESET_NAMES, V1, V2, get_preset
from test_model import tiny_bundle


@pytest.fixture
def tiny_source(tmp_path, monkeypatch):
    """3 SYNTHETIC cases of 12 x 40 x 40 with a three-stage ResEnc (nnunet_voco.nnunet.synthetic_datasets)."""
    return open_tiny_synthetic(tmp_path, monkeypatch, 982, 3)


@pytest.mark.parametrize("preset, values", [
    (V2, ("v2", 1024, False, True, 0.2, 0.5)),  # TPAMI code (VOCO_SPEC.md 2.2-2.3)
    (V1, ("v1", 2048, True, False, 0.0, 0.1)),  # CVPR repository code (VOCO_SPEC.md 1.2-1.5)
])
def test_preset_values(preset, values):
    assert (preset.name, preset.head_dim, preset.teacher_encoder, preset.uses_embedding_dropout,
            preset.embedding_dropout, preset.shift_prob) == values


def test_unknown_preset_lists_the_valid_ones():
    assert PRESET_NAMES == ("v2", "v1")
    with pytest.raises(ValueError, match="unknown VoCo preset 'v3'; choose one of v2, v1"):
        get_preset("v3")


def test_model_reads_its_preset():
    v1 = VoCoModel(tiny_bundle(), "v1", VoCoLoss("v1"), embedding_dropout=0.2)
    v2 = VoCoModel(tiny_bundle(), "v2", VoCoLoss("v2"), embedding_dropout=0.2)
    assert v1.projector[0].out_features == 2048 and v2.projector[0].out_features == 1024
    assert v1.teacher_encoder is not None and v2.teacher_encoder is None
    assert (v1.embedding_dropout, v2.embedding_dropout) == (0.0, 0.2)


@pytest.mark.parametrize("grid, spacing, median, expected", [
    ((1, 3, 3), (1, 1, 1), None, (1, 2)),  # the split plane
    ((3, 3, 1), (3, 1, 1), None, (0, 1)),  # the split plane, whatever the spacing
    ((1, 1, 3), (3, 1, 1), None, (1, 2)),  # one split axis: the plane without the coarse axis
    ((1, 1, 1), (1, 1, 1), (40, 40, 20), (0, 1)),  # isotropic: the plane without the shortest axis
    ((2, 2, 2), (1, 1, 1), None, (1, 2)),  # isotropic, no median: axis 0 is whole
])
def test_inplane_axes(grid, spacing, median, expected):
    assert geometry.inplane_axes(grid, spacing, median) == expected


def test_encoders_say_which_crops_they_accept():
    assert tiny_bundle().validate_crop((8, 12, 16)) == (8, 12, 16)
    with pytest.raises(ValueError, match=r"10 on axis 1 \(1 mm\)"):
        tiny_bundle().validate_crop((8, 10, 16), (2.5, 1.0, 1.0))
    swin = build_swin_encoder(1, 12)
    assert swin.crop_stride == (32, 32, 32) and swin.validate_crop((32, 64, 32)) == (32, 64, 32)
    for bundle, crop in ((swin, (32, 32, 32)), (tiny_bundle(), (4, 4, 4))):  # one shared rule for both families
        with pytest.raises(ValueError, match="deepest feature map 1 x 1 x 1 voxel"):
            bundle.validate_crop(crop)


@pytest.mark.parametrize("preset", ["v2", "v1"])
def test_resolve_run_applies_the_rules_once(tiny_source, preset):
    config = PretrainConfig(datasets=("982",), plans=RESENC_M_PLANS, preset=preset, head_dim=16, num_workers=0)
    setup = resolve_run(config, tiny_source, RunContext(torch.device("cpu")))
    cm = tiny_source[0].configuration_manager
    crop, grid, _ = geometry.fitted_layout(setup.median_shape, cm.patch_size, cm.spacing, setup.bundle.crop_stride)
    assert (setup.layout.crop_size, setup.layout.grid) == (crop, grid)
    assert setup.batch_size == resolve_batch_size(config, cm, setup.layout)
    assert setup.inplane == geometry.inplane_axes(grid, cm.spacing, setup.median_shape)
    assert setup.augment.shift_prob == get_preset(preset).shift_prob and setup.warmup_steps == 5000
    assert len(setup.val_cases) == 2 and len(setup.train_cases) == 1 and not setup.warnings
    assert setup.describe("F")[1].startswith("VoCo: geometry (median case (12, 40, 40) of 3 checked cases): window = "
                                             "grid x crop fitted to the median case (12, 40, 40)")
    batch = next(iter(setup.make_loader(0)))
    assert batch["bases"].shape == (setup.batch_size, setup.layout.num_bases, 1) + crop

