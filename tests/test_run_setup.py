"""The run set-up resolved once: presets, in-plane axes, the encoder's crop rule, resolve_run itself."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import step_profile  # noqa: E402
from conftest import open_tiny_synthetic  # noqa: E402
from nnunet_voco.encoders.swin import build_swin_encoder  # noqa: E402
from nnunet_voco.nnunet.loader import VoCoStream, make_loader  # noqa: E402
from nnunet_voco.nnunet.synthetic_datasets import RESENC_M_PLANS  # noqa: E402
from nnunet_voco.pretrain import run_setup  # noqa: E402
from nnunet_voco.pretrain.config import PretrainConfig  # noqa: E402
from nnunet_voco.pretrain.distributed import RunContext  # noqa: E402
from nnunet_voco.pretrain.run_setup import V2_ONE_VOLUME_WARNING, RunSetup, resolve_batch_size, resolve_run  # noqa: E402
from nnunet_voco.voco import geometry  # noqa: E402
from nnunet_voco.voco.loss import VoCoLoss  # noqa: E402
from nnunet_voco.voco.model import VoCoModel  # noqa: E402
from nnunet_voco.voco.presets import PRESET_NAMES, V1, V2, get_preset  # noqa: E402
from nnunet_voco.voco.sampling import WindowSampler  # noqa: E402
from test_model import tiny_bundle  # noqa: E402


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
    assert len(setup.val_cases) == 2 and len(setup.train_cases) == 1
    assert setup.describe("F")[1].startswith("VoCo: geometry (median case (12, 40, 40) of 3 checked cases): window = "
                                             "grid x crop fitted to the median case (12, 40, 40)")
    one_volume = preset == "v2" and setup.batch_size == 1  # the tiny plans give 1 volume per step
    assert setup.warnings == ((V2_ONE_VOLUME_WARNING,) if one_volume else ())
    batch = next(iter(setup.make_loader(0)))
    assert batch["bases"].shape == (setup.batch_size, setup.layout.num_bases, 1) + crop


def test_step_benchmark_uses_the_resolved_run(tiny_source):
    pipe = step_profile.build_pipeline(tiny_source, RESENC_M_PLANS, batch_size=1, num_workers=0, head_dim=16)
    assert isinstance(pipe.setup, RunSetup) and pipe.optimizer is pipe.setup.optimizer
    assert pipe.model is pipe.setup.model and pipe.inplane == pipe.setup.inplane and not pipe.setup.val_cases


# ============ data workers on the GPU path (issue 18, item 6) ============
def test_default_workers_share_the_machine_between_its_ranks(monkeypatch):
    monkeypatch.setattr(run_setup, "usable_cpus", lambda: 16)
    assert [run_setup.default_num_workers(n) for n in (1, 2, 4, 8, 16)] == [4, 4, 3, 1, 0]
    monkeypatch.setattr(run_setup, "usable_cpus", lambda: 2)
    assert run_setup.default_num_workers() == 1


def test_batch_bytes_is_what_the_loader_hands_over(tiny_source):
    config = PretrainConfig(datasets=("982",), plans=RESENC_M_PLANS, head_dim=16, num_workers=0, batch_size=2,
                            crop_size=(8, 16, 16))
    setup = resolve_run(config, tiny_source, RunContext(torch.device("cpu")))
    batch = next(iter(setup.make_loader(0)))
    assert setup.batch_bytes == sum(t.numel() * t.element_size() for t in batch.values())


def test_shared_memory_warning_names_the_need_and_a_worker_count_that_fits(monkeypatch, tmp_path):
    batch = 100 * 2**20  # 100 MiB per batch
    free = {"bytes": 10 * 2**30}
    monkeypatch.setattr(run_setup.shutil, "disk_usage", lambda folder: types.SimpleNamespace(free=free["bytes"]))
    assert run_setup.shared_memory_warning(batch, 4, 2, str(tmp_path)) is None  # 3.1 GiB of 10 GiB
    assert run_setup.shared_memory_warning(batch, 0, 8, str(tmp_path)) is None  # no workers, no shared memory
    free["bytes"] = 2**30
    line = run_setup.shared_memory_warning(batch, 4, 2, str(tmp_path))
    # 4 batches in flight x 4 workers x 100 MiB x 2 ranks = 3.12 GiB > 1 GiB: 1 worker per rank fits (0.78 GiB)
    assert line == (f"VoCo: warning: the data workers keep up to 4 x 4 batches of 100 MiB in {tmp_path} per process "
                    f"(2 process(es) on this machine: 3.12 GiB), but it has 1.00 GiB free; workers die with a bus "
                    f"error when it fills up: pass --num_workers 1 or enlarge it (docker run --shm-size=5g)")


@pytest.mark.parametrize("start_method", ["forkserver"])
def test_workers_started_without_a_fork_of_the_run_give_the_same_batches(tiny_source, start_method):
    """The CUDA path's start method: the stream pickles to clean worker processes and draws the same windows."""
    config = PretrainConfig(datasets=("982",), plans=RESENC_M_PLANS, head_dim=16, num_workers=1, batch_size=2,
                            crop_size=(8, 16, 16))
    setup = resolve_run(config, tiny_source, RunContext(torch.device("cpu")))
    assert setup.worker_start_method is None  # CPU: the platform default (fork)
    sampler = WindowSampler(setup.sources, setup.layout, config.foreground_probability, setup.train_cases)
    stream = VoCoStream(sampler, config.seed, 0, 0, setup.augment, setup.inplane)
    batches = {}
    for method in (None, start_method):
        it = iter(make_loader(stream, 2, 1, pin_memory=False, start_method=method))
        batches[method] = [next(it) for _ in range(2)]
        it._shutdown_workers()
    for a, b in zip(batches[None], batches[start_method]):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_cuda_setup_starts_workers_with_forkserver():
    ctx = RunContext(torch.device("cuda"))
    setup = RunSetup.__new__(RunSetup)
    object.__setattr__(setup, "ctx", ctx)
    assert setup.worker_start_method == "forkserver"
