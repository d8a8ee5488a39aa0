"""The run set-up resolved once: presets, in-plane axes, the encoder's crop rule, resolve_run itself."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import data_pipeline, step_profile  # noqa: E402
from nnunet_voco.encoders.swin import build_swin_encoder  # noqa: E402
from nnunet_voco.pretrain.config import PretrainConfig  # noqa: E402
from nnunet_voco.pretrain.distributed import RunContext  # noqa: E402
from nnunet_voco.pretrain.run_setup import V2_ONE_VOLUME_WARNING, RunSetup, resolve_batch_size, resolve_run  # noqa: E402
from nnunet_voco.voco import geometry  # noqa: E402
from nnunet_voco.voco.loss import VoCoLoss  # noqa: E402
from nnunet_voco.voco.model import VoCoModel  # noqa: E402
from nnunet_voco.voco.presets import PRESET_NAMES, V1, V2, get_preset  # noqa: E402
from test_model import tiny_bundle  # noqa: E402

TINY_PLANS = data_pipeline.synthetic_plans("Tiny", (8, 16, 16), (4, 8, 16), ((1, 1, 1), (1, 2, 2), (2, 2, 2)), (1, 1, 1))


@pytest.fixture
def tiny_source(tmp_path, monkeypatch):
    from nnunet_voco.nnunet import open_dataset

    folders = data_pipeline.nnunet_folders(str(tmp_path))
    for key, value in folders.items():
        monkeypatch.setenv(key, value)
    data_pipeline.write_synthetic_dataset(folders["nnUNet_preprocessed"], 982, "Tiny", TINY_PLANS, 3, (12, 40, 40))
    return [open_dataset(982, data_pipeline.PLANS, "3d_fullres")]


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
    with pytest.raises(ValueError, match="on axis y"):
        tiny_bundle().validate_crop((8, 10, 16))
    swin = build_swin_encoder(1, 12)
    assert swin.crop_stride == (32, 32, 32) and swin.validate_crop((32, 64, 32)) == (32, 64, 32)
    with pytest.raises(ValueError, match="1-voxel bottleneck"):
        swin.validate_crop((32, 32, 32))


@pytest.mark.parametrize("preset", ["v2", "v1"])
def test_resolve_run_applies_the_rules_once(tiny_source, preset):
    config = PretrainConfig(datasets=("982",), plans=data_pipeline.PLANS, preset=preset, head_dim=16, num_workers=0)
    setup = resolve_run(config, tiny_source, RunContext(torch.device("cpu")))
    cm = tiny_source[0].configuration_manager
    crop, grid, _ = geometry.fitted_layout(setup.median_shape, cm.patch_size, cm.spacing, setup.bundle.crop_stride)
    assert (setup.layout.crop_size, setup.layout.grid) == (crop, grid)
    assert setup.batch_size == resolve_batch_size(config, cm, setup.layout)
    assert setup.inplane == geometry.inplane_axes(grid, cm.spacing, setup.median_shape)
    assert setup.augment.shift_prob == get_preset(preset).shift_prob and setup.warmup_steps == 5000
    assert len(setup.val_cases) == 2 and len(setup.train_cases) == 1
    one_volume = preset == "v2" and setup.batch_size == 1  # the tiny plans give 1 volume per step
    assert setup.warnings == ((V2_ONE_VOLUME_WARNING,) if one_volume else ())
    batch = next(iter(setup.make_loader(0)))
    assert batch["bases"].shape == (setup.batch_size, setup.layout.num_bases, 1) + crop


def test_step_benchmark_uses_the_resolved_run(tiny_source):
    pipe = step_profile.build_pipeline(tiny_source, data_pipeline.PLANS, batch_size=1, num_workers=0, head_dim=16)
    assert isinstance(pipe.setup, RunSetup) and pipe.optimizer is pipe.setup.optimizer
    assert pipe.model is pipe.setup.model and pipe.inplane == pipe.setup.inplane and not pipe.setup.val_cases
