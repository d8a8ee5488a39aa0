"""Benchmarks run and report what they promise (correctness on tiny sizes, never timings), plus the
device-side skip of ``train_step`` and the batched augmentation they measure."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import data_pipeline, gpu, step_profile  # noqa: E402
from benchmarks.loss_benchmark import benchmark_loss  # noqa: E402
from conftest import open_tiny_synthetic  # noqa: E402
from nnunet_voco.voco.augment import AugmentConfig, CropTransforms, apply_transforms, draw_transforms, transform_into  # noqa: E402
from nnunet_voco.nnunet import synthetic_datasets  # noqa: E402
from nnunet_voco.nnunet.loader import VoCoStream  # noqa: E402
from nnunet_voco.pretrain.config import PretrainConfig  # noqa: E402
from nnunet_voco.pretrain.distributed import RunContext  # noqa: E402
from nnunet_voco.pretrain.loop import train_step  # noqa: E402
from nnunet_voco.pretrain.run_setup import RunSetup  # noqa: E402
from nnunet_voco.voco.sampling import CropLayout, WindowSampler, cut_crops  # noqa: E402
from nnunet_voco.voco.synthetic_batches import synthetic_batch  # noqa: E402

LAYOUT = CropLayout((4, 8, 8), (1, 3, 3), 2)


@pytest.fixture
def tiny_source(tmp_path, monkeypatch):
    """A 2-case SYNTHETIC blosc2 dataset written by nnU-Net's save_case, opened like voco_pretrain opens data."""
    return open_tiny_synthetic(tmp_path, monkeypatch, 981, 2)


def test_loss_benchmark_matches_reference():
    rows = benchmark_loss("cpu", sizes=((2, 2, 4, 16), (3, 2, 4, 8)), repeats=1, reference_repeats=1, warmup=0)
    assert [(r["preset"], r["B"]) for r in rows] == [("v2", 2), ("v2", 3), ("v1", 2), ("v1", 3)]
    assert all(r["max_abs_diff"] < 1e-5 and r["max_grad_diff"] < 1e-5 for r in rows)
    assert all(r["speedup"] == pytest.approx(r["official_structure_ms"] / r["voco_ms"]) for r in rows)


def test_sampling_benchmark_reads_only_the_window(tiny_source):
    r = data_pipeline.benchmark_sampling(tiny_source, LAYOUT, volumes=2, reference_volumes=1, loader_batches=0)
    assert {"ms_per_volume", "naive_ms_per_volume", "full_case_read_ms", "window_read_ms",
            "speedup_vs_naive"} <= r.keys()
    assert r["max_read_fraction_of_window"] <= 1.0 and r["max_read_fraction_of_case"] < 0.5
    assert r["crops_per_volume"] == 11 and r["loader_ms_per_volume"] is None


def test_naive_reference_cuts_the_same_crops_without_augmentation(tiny_source):
    dataset = tiny_source[0].open()
    ident = tiny_source[0].identifiers[0]
    none = AugmentConfig(0, 0, 0, 0, 0, 0)
    sampler = WindowSampler(tiny_source[:1], LAYOUT)
    sampler.cases = [(0, ident)]
    ref = sampler.sample(np.random.default_rng(3))
    rng = np.random.default_rng(3)
    rng.integers(1)  # the sampler's draw of the case
    bases, targets = data_pipeline.naive_sample(dataset, ident, LAYOUT, none, rng)
    np.testing.assert_array_equal(bases, ref["bases"])
    assert targets.shape == ref["targets"].shape


def test_worker_sample_equals_cut_then_batched_augmentation(tiny_source):
    stream = VoCoStream(WindowSampler(tiny_source, LAYOUT), seed=1, augment=AugmentConfig(0.5, 0.5, 0.5, 0.1, 0.5, 0.1))
    rng, gen = stream.generators()
    sample = stream.make_sample(rng, gen)
    rng, gen = stream.generators()
    window = stream.sampler.sample_window(rng)
    transforms = draw_transforms(11, stream.augment, gen, square=True)
    bases, targets = cut_crops(window["window"], LAYOUT, window["target_offsets"])
    expected = apply_transforms(torch.from_numpy(np.concatenate([bases, targets])), transforms)
    torch.testing.assert_close(torch.cat([sample["bases"], sample["targets"]]), expected, rtol=0, atol=0)
    torch.testing.assert_close(sample["overlaps"], torch.from_numpy(window["overlaps"]))


@pytest.mark.parametrize("inplane", [(1, 2), (0, 1)])
def test_numpy_and_torch_appliers_agree_on_every_transform(inplane):
    crops = torch.randn(32, 2, 6, 6, 6)
    codes = torch.arange(32)
    t = CropTransforms(torch.stack([(codes >> i) & 1 for i in range(3)], 1).bool(), (codes >> 3) % 4,
                       torch.linspace(0.9, 1.1, 32), torch.linspace(-0.1, 0.1, 32))
    out = np.empty(crops.shape, dtype=np.float32)
    transform_into(list(crops.numpy()), out, t, inplane)
    expected = torch.stack([torch.rot90(c.flip([d + 1 for d in range(3) if f[d]]) if f.any() else c, int(k),
                                        (inplane[0] + 1, inplane[1] + 1)) * s + b
                            for c, f, k, s, b in zip(crops, t.flips, t.turns, t.scale, t.shift)])
    torch.testing.assert_close(torch.from_numpy(out), expected, rtol=0, atol=0)
    torch.testing.assert_close(apply_transforms(crops, t, inplane), expected, rtol=0, atol=0)


def _tiny_pipeline(sources, **kw):
    return step_profile.build_pipeline(sources, synthetic_datasets.RESENC_M_PLANS, crop_size=(8, 16, 16), batch_size=1,
                                       num_workers=0, head_dim=32, **kw)


def test_step_profile_shares_cover_the_step(tiny_source):
    r = step_profile.profile_steps(_tiny_pipeline(tiny_source), steps=1, warmup=0)
    assert set(r["share"]) == set(step_profile.PHASES)
    assert abs(sum(r["share"].values()) - 1) < 1e-9 and r["all_finite"]
    assert r["crops_per_step"] == 11 and r["ms_per_step"] == pytest.approx(sum(r["ms"].values()))
    assert r["volumes_per_s"] == pytest.approx(1e3 * r["batch_size"] / r["ms_per_step"])


def test_scaling_rows_follow_the_sweeps(tiny_source):
    rows = step_profile.scaling(_tiny_pipeline(tiny_source), base_counts=(4, 9), crop_edges=(8,))
    assert [(r["sweep"], r["bases"], r["crop"], r["crops"]) for r in rows] == [
        ("bases", 4, 8, 6), ("bases", 9, 8, 11), ("crop", 9, 8, 11)]
    assert all(r["step_over_encoder"] == pytest.approx(r["step_ms"] / r["encoder_ms"]) for r in rows)


def test_gpu_script_dry_run(tmp_path, monkeypatch):
    """gpu.py runs voco_pretrain itself and reports the figures of its metric rows."""
    for key, value in synthetic_datasets.nnunet_folders(str(tmp_path / "nn")).items():
        monkeypatch.setenv(key, value)  # restored after the test
    out = tmp_path / "gpu.json"
    gpu.main(["--dry_run", "--steps", "2", "--warmup", "1", "--root", str(tmp_path / "nn"), "--out", str(out)])
    result = json.loads(out.read_text())
    [row] = result["rows"]
    folder = tmp_path / "nn" / "runs" / "eager"
    assert row["variant"] == "eager" and row["steps"] == 2 and row["folder"] == str(folder)
    config = json.load(open(folder / "config.json"))  # a real voco_pretrain run with its resolved values
    assert config["config"]["num_steps"] == 3 and config["batch_size"] == row["batch_size"]
    assert os.path.isfile(folder / "voco_encoder.pth")
    timed = [r for r in map(json.loads, open(folder / "metrics.jsonl")) if "loss" in r and r["step"] > 1]
    assert row["ms_per_step"] == pytest.approx(1e3 * sum(r["seconds"] for r in timed) / 2)
    assert row["volumes_per_s"] == pytest.approx(row["steps_per_s"] * row["batch_size"])
    assert 0 <= row["data_wait_share"] <= 1 and row["peak_gpu_gib"] is None
    ratio = result["step_over_encoder"]  # at the run's own crops: K + S crops per volume
    assert ratio["crops"] == row["batch_size"] * 11 and ratio["ratio"] == pytest.approx(
        ratio["step_ms"] / ratio["encoder_ms"])
    assert result["meta"]["dry_run"] and all(c <= p for c, p in zip(row["crop_size"], result["meta"]["patch_size"]))


def _step_inputs(pipe, value=None):
    batch = synthetic_batch(pipe.layout, 1, 1)
    if value is not None:
        batch["bases"][0, 0, 0, 0, 0, 0] = value
    return batch


@pytest.mark.parametrize("fused", [True, False])
def test_train_step_skips_nonfinite_updates(tiny_source, fused):
    pipe = _tiny_pipeline(tiny_source)
    if not fused:
        pipe.optimizer = torch.optim.SGD(pipe.optimizer.param_groups[0]["params"], lr=0.1)
    ctx, config = RunContext(torch.device("cpu")), PretrainConfig(datasets=("x",))
    before = [p.detach().clone() for p in pipe.model.parameters()]
    stats = train_step(pipe.model, _step_inputs(pipe, float("nan")), pipe.optimizer, None, ctx, None, config, None,
                       pipe.generator, pipe.inplane)
    assert isinstance(stats["finite"], torch.Tensor) and not stats["finite"]
    assert all(torch.equal(a, b) for a, b in zip(before, pipe.model.parameters()))
    if fused:  # the step count is rolled back as well
        assert all(float(s["step"]) == 0 for s in pipe.optimizer.state.values())
    stats = train_step(pipe.model, _step_inputs(pipe), pipe.optimizer, None, ctx, None, config, None,
                       pipe.generator, pipe.inplane)
    assert stats["finite"] and not torch.equal(before[0], next(pipe.model.parameters()))


def test_fused_skip_leaves_adam_state_untouched(tiny_source):
    pipe = _tiny_pipeline(tiny_source)
    ctx, config = RunContext(torch.device("cpu")), PretrainConfig(datasets=("x",))
    train_step(pipe.model, _step_inputs(pipe), pipe.optimizer, None, ctx, None, config, None, pipe.generator,
               pipe.inplane)
    state = {k: {n: v.clone() for n, v in s.items()} for k, s in pipe.optimizer.state.items()}
    train_step(pipe.model, _step_inputs(pipe, float("inf")), pipe.optimizer, None, ctx, None, config, None,
               pipe.generator, pipe.inplane)
    assert not hasattr(pipe.optimizer, "found_inf")
    for key, s in pipe.optimizer.state.items():
        assert all(torch.equal(v, state[key][n]) for n, v in s.items())


def _step_against_default(tiny_source, tolerance: float, **variant) -> None:
    """One ``train_step`` of a variant and of the default eager pipeline from the same seed, on the same batch:
    the same loss terms and the same gradient of every parameter, within ``tolerance`` (relative)."""
    results = []
    for kw in ({}, variant):
        pipe = _tiny_pipeline(tiny_source, **kw)
        assert all(getattr(pipe.config, k) == v for k, v in kw.items())
        torch.manual_seed(7)  # the v2 embedding dropout draws from the global generator
        stats = train_step(pipe.model, _step_inputs(pipe), pipe.optimizer, None, pipe.ctx, None, pipe.config, None,
                           pipe.generator, pipe.inplane)
        grads = {n.replace("_orig_mod.", ""): p.grad.detach().clone()  # torch.compile wraps the encoder
                 for n, p in pipe.setup.model.named_parameters() if p.grad is not None}
        results.append(({k: float(v) for k, v in stats.items() if k != "finite"}, grads, bool(stats["finite"])))
    (loss_a, grads_a, finite_a), (loss_b, grads_b, finite_b) = results
    assert finite_a and finite_b and loss_a.keys() == loss_b.keys()
    assert loss_b == pytest.approx(loss_a, rel=tolerance, abs=1e-6)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    # absolute slack on the scale of the whole gradient: a bias ahead of a batch norm gets ~0 (float noise)
    scale = max(float(g.abs().max()) for g in grads_a.values())
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name].contiguous(), grad, rtol=tolerance, atol=tolerance * scale,
                                   msg=lambda m: f"{name}: {m}")


def test_channels_last_step_equals_the_default_step(tiny_source):
    _step_against_default(tiny_source, 1e-4, channels_last=True)


@pytest.mark.slow  # inductor compiles C++ on the CPU: about a minute even for this tiny encoder
def test_compiled_encoder_step_equals_the_eager_step(tiny_source):
    _step_against_default(tiny_source, 1e-3, compile=True)

def test_step_benchmark_uses_the_resolved_run(tiny_source):
    pipe = step_profile.build_pipeline(tiny_source, synthetic_datasets.RESENC_M_PLANS, batch_size=1, num_workers=0,
                                       head_dim=16)
    assert isinstance(pipe.setup, RunSetup) and pipe.optimizer is pipe.setup.optimizer
    assert pipe.model is pipe.setup.model and pipe.inplane == pipe.setup.inplane and not pipe.setup.val_cases
