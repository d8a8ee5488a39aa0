"""Window sampling + augmentation per volume from nnU-Net blosc2 data, against in-run references.

What is timed is exactly what one data worker does per volume (:meth:`VoCoStream.make_sample`, i.e.
:meth:`WindowSampler.sample`, the one crop cutter of the loader, the monitor and the tests: read the
window once from the memory-mapped case, write every crop once, flipped/rotated/shifted on the way), once in-process and once through the real DataLoader with one worker (collation into
shared memory and the hand-over included). The references are measured in the same run on the
same cases:

* ``naive``: a per-crop pipeline as a transform library would run it: decompress the whole case,
  slice each of the ``K + S`` crops separately, augment crop by crop with numpy (each flip,
  rotation and intensity change a new array), stack.
* ``full case read``: decompressing the whole case once, the floor of any pipeline that reads
  whole volumes.

Data: :func:`prepare_benchmark_data` writes two synthetic CT-like phantoms (``nnunet_voco.demo.phantom``)
as nnU-Net raw datasets and runs the real ``nnUNetv2_plan_and_preprocess`` on them once (ResEnc-M
planner; cached under ``$TMPDIR/nnunet_voco_bench``): 4 cases of 80 x 256 x 256 voxels at
2.5 x 1 x 1 mm, big enough for the default v2 window (grid 1 x 3 x 3 of 64^3 crops = 64 x 192 x 192),
and 4 small cases of 16 x 48 x 48 whose ResEnc-M plans give the tiny encoder of the step profile.
:func:`write_synthetic_dataset` writes a tiny preprocessed dataset directly (nnU-Net's own
``save_case`` and chunk heuristics, hand-written plans) for the tests and ``gpu.py --dry_run``.

Run alone: ``python benchmarks/data_pipeline.py [--volumes 40]``; ``benchmarks/run.py`` calls
:func:`benchmark_sampling`.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nnunet_voco.voco.augment import AugmentConfig  # noqa: E402
from nnunet_voco.nnunet.loader import VoCoStream, make_loader  # noqa: E402
from nnunet_voco.voco.sampling import CropLayout, WindowSampler, window_origin  # noqa: E402
from nnunet_voco.voco import geometry  # noqa: E402

DATA_VERSION = 1  # bump when the generated data change, so that stale caches are rebuilt
LARGE = {"id": 991, "name": "BenchLarge", "shape": (80, 256, 256), "cases": 4}  # (z, y, x) at 2.5 x 1 x 1 mm
TOY = {"id": 992, "name": "BenchToy", "shape": (16, 48, 48), "cases": 4}
PLANNER, PLANS = "nnUNetPlannerResEncM", "nnUNetResEncUNetMPlans"
V2_LAYOUT = CropLayout((64, 64, 64), (1, 3, 3), 2)  # default v2 geometry: 3x3 in-plane grid + 2 targets


def default_root() -> str:
    """``$TMPDIR/nnunet_voco_bench``: where the generated data are cached between runs."""
    return os.path.join(tempfile.gettempdir(), "nnunet_voco_bench")


def nnunet_folders(root: str) -> dict:
    """The three nnU-Net folders under ``root`` (created)."""
    env = {k: os.path.join(root, k[7:]) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for folder in env.values():
        os.makedirs(folder, exist_ok=True)
    return env


def _console(name: str) -> str:
    exe = os.path.join(os.path.dirname(sys.executable), name)
    return exe if os.path.exists(exe) else name


def prepare_benchmark_data(root: str | None = None, log=print) -> dict:
    """Generate and plan the benchmark datasets once; point this process's nnU-Net variables at them.

    Args:
        root: cache folder (default :func:`default_root`).
        log: progress printer.

    Returns:
        The nnU-Net folder variables (also set in ``os.environ``).

    Raises:
        RuntimeError: ``nnUNetv2_plan_and_preprocess`` failed (its output tail is in the message).
    """
    from nnunet_voco.demo import phantom

    root = root or default_root()
    env = nnunet_folders(root)
    marker = os.path.join(root, "ready.json")
    stamp = {"version": DATA_VERSION, "large": LARGE, "toy": TOY, "planner": PLANNER}
    ready = os.path.isfile(marker) and json.load(open(marker)) == json.loads(json.dumps(stamp))
    os.environ.update(env)
    if ready:
        return env
    start = time.perf_counter()
    log(f"benchmark data: generating phantoms and running nnUNetv2_plan_and_preprocess once into {root} ...")
    for spec in (LARGE, TOY):
        phantom.write_nnunet_raw_dataset(env["nnUNet_raw"], spec["id"], spec["name"], list(range(spec["cases"])),
                                         shape=spec["shape"], spacing=(2.5, 1.0, 1.0))
    proc_env = dict(os.environ, nnUNet_def_n_proc="2", OMP_NUM_THREADS="1")
    cmd = [_console("nnUNetv2_plan_and_preprocess"), "-d", str(LARGE["id"]), str(TOY["id"]), "-c", "3d_fullres",
           "-pl", PLANNER, "-np", "2", "-npfp", "2"]
    proc = subprocess.run(cmd, env=proc_env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {(proc.stdout + proc.stderr)[-2000:]}")
    with open(marker, "w") as f:
        json.dump(stamp, f)
    log(f"benchmark data ready after {time.perf_counter() - start:.0f} s (cached for later runs)")
    return env


def synthetic_plans(name: str, patch_size, features, strides, blocks, batch_size: int = 2,
                    spacing=(2.5, 1.0, 1.0), plans_name: str = PLANS) -> dict:
    """Plans of a ResEnc U-Net in nnU-Net 2.8's layout (3d_fullres only), for synthetic datasets."""
    n = len(features)
    kernels = [[1, 3, 3] if spacing[0] > 2 * min(spacing) and i == 0 else [3, 3, 3] for i in range(n)]
    arch = {"n_stages": n, "features_per_stage": list(features), "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": kernels, "strides": [list(s) for s in strides], "n_blocks_per_stage": list(blocks),
            "n_conv_per_stage_decoder": [1] * (n - 1), "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True}}
    resampling = {"resampling_fn_data": "resample_data_or_seg_to_shape",
                  "resampling_fn_seg": "resample_data_or_seg_to_shape",
                  "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                  "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                  "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                  "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                         "force_separate_z": None}}
    config = {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
              "batch_size": batch_size, "patch_size": list(patch_size),
              "median_image_size_in_voxels": [float(p) for p in patch_size], "spacing": list(spacing),
              "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False], **resampling,
              "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet."
                                                     "ResidualEncoderUNet",
                               "arch_kwargs": arch, "_kw_requires_import": ["conv_op", "norm_op", "dropout_op",
                                                                            "nonlin"]},
              "batch_dice": False}
    return {"dataset_name": name, "plans_name": plans_name, "original_median_spacing_after_transp": list(spacing),
            "original_median_shape_after_transp": list(patch_size), "image_reader_writer": "SimpleITKIO",
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "configurations": {"3d_fullres": config}, "experiment_planner_used": "synthetic",
            "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {"0": {
                "max": 3.0, "mean": 0.0, "median": 0.0, "min": -3.0, "percentile_00_5": -2.5,
                "percentile_99_5": 2.5, "std": 1.0}}}


def synthetic_case(shape, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """A smooth z-scored volume ``(1, *shape)`` with a labelled blob and nnU-Net-style properties."""
    from scipy.ndimage import gaussian_filter

    data = gaussian_filter(rng.standard_normal(shape).astype(np.float32), 1.0)[None]
    data /= data.std() + 1e-6
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    seg = (sum(g ** 2 for g in grids) < 0.3).astype(np.int16)[None]
    locations = np.argwhere(seg > 0)
    locations = locations[rng.choice(len(locations), min(len(locations), 500), replace=False)]
    props = {"spacing": [2.5, 1.0, 1.0], "shape_before_cropping": tuple(shape),
             "bbox_used_for_cropping": [[0, s] for s in shape], "shape_after_cropping_and_before_resampling":
             tuple(shape), "class_locations": {1: locations.astype(np.int64)}}
    return data, seg, props


def write_synthetic_dataset(preprocessed_root: str, dataset_id: int, name: str, plans: dict,
                            n_cases: int = 2, shape=(16, 48, 48), seed: int = 0) -> str:
    """Write ``Dataset<id>_<name>`` (dataset.json, plans, blosc2 cases) straight into ``nnUNet_preprocessed``.

    Cases go through nnU-Net's own ``nnUNetDatasetBlosc2.save_case`` with the chunk and block
    shapes its preprocessor would choose for the plans' patch size (``comp_blosc2_params``).

    Returns:
        The dataset folder.
    """
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2, comp_blosc2_params

    folder = os.path.join(preprocessed_root, f"Dataset{dataset_id:03d}_{name}")
    data_folder = os.path.join(folder, "nnUNetPlans_3d_fullres")
    os.makedirs(data_folder, exist_ok=True)
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump({"channel_names": {"0": "CT"}, "labels": {"background": 0, "blob": 1}, "numTraining": n_cases,
                   "file_ending": ".nii.gz", "name": name}, f)
    with open(os.path.join(folder, plans["plans_name"] + ".json"), "w") as f:
        json.dump(dict(plans, dataset_name=os.path.basename(folder)), f, indent=1)
    patch = tuple(plans["configurations"]["3d_fullres"]["patch_size"])
    rng = np.random.default_rng(seed)
    for i in range(n_cases):
        data, seg, props = synthetic_case(shape, rng)
        blocks, chunks = comp_blosc2_params(data.shape, patch, data.itemsize)
        blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, patch, seg.itemsize)
        nnUNetDatasetBlosc2.save_case(data, seg, props, os.path.join(data_folder, f"{name}_{i:03d}"), chunks=chunks,
                                      blocks=blocks, chunks_seg=chunks_seg, blocks_seg=blocks_seg)
    return folder


class _RecordingArray:
    """Wraps a case array and records the number of voxels of every region read from it."""

    def __init__(self, array, reads: list):
        self.array, self.reads = array, reads
        self.shape, self.dtype = array.shape, array.dtype

    def __getitem__(self, key):
        region = self.array[key]
        self.reads.append((int(np.prod(np.shape(region))), int(np.prod(self.shape))))
        return region


class _RecordingSource:
    """A dataset source whose cases record their reads (``WindowSampler`` uses name, identifiers, open)."""

    def __init__(self, source, reads: list):
        self.source, self.reads = source, reads
        self.name, self.identifiers = source.name, source.identifiers

    def open(self):
        dataset, reads = self.source.open(), self.reads

        class _Dataset:
            def load_case(self, identifier):
                data, seg, prev, props = dataset.load_case(identifier)
                return _RecordingArray(data, reads), seg, prev, props
        return _Dataset()


def naive_sample(dataset, identifier: str, layout: CropLayout, augment: AugmentConfig, rng: np.random.Generator,
                 inplane_axes=(1, 2), foreground_probability: float = 0.67) -> tuple[np.ndarray, np.ndarray]:
    """Reference pipeline: whole case decompressed, one crop at a time, numpy augmentation per crop.

    Returns:
        ``bases (K, C, *crop)`` and ``targets (S, C, *crop)``.
    """
    data, _, _, properties = dataset.load_case(identifier)
    volume = np.asarray(data[:], dtype=np.float32)  # the whole case
    window = np.asarray(layout.window)
    origin = window_origin(volume.shape[1:], window, properties, foreground_probability, rng)
    pad_lo = np.maximum(-origin, 0)
    pad_hi = np.maximum(origin + window - np.asarray(volume.shape[1:]), 0)
    if pad_lo.any() or pad_hi.any():
        fill = float(volume.min())
        volume = np.pad(volume, [(0, 0)] + [(int(a), int(b)) for a, b in zip(pad_lo, pad_hi)], constant_values=fill)
        origin = origin + pad_lo
    corners = np.concatenate([geometry.base_crop_offsets(layout.crop_size, layout.grid),
                              geometry.sample_target_offsets(window, layout.crop_size, layout.num_targets, rng)])
    crops = []
    for corner in corners:
        lo = origin + corner
        crop = volume[(slice(None),) + tuple(slice(int(a), int(a) + c) for a, c in zip(lo, layout.crop_size))].copy()
        for axis in range(3):
            if rng.random() < augment.flip_prob:
                crop = np.flip(crop, axis + 1).copy()
        if rng.random() < augment.rot90_prob:
            crop = np.rot90(crop, int(rng.integers(1, 4)), axes=tuple(a + 1 for a in inplane_axes)).copy()
        if rng.random() < augment.scale_prob:
            crop = crop * np.float32(1 + rng.uniform(-augment.scale, augment.scale))
        if rng.random() < augment.shift_prob:
            crop = crop + np.float32(rng.uniform(-augment.shift, augment.shift))
        crops.append(crop)
    k = layout.num_bases
    return np.stack(crops[:k]), np.stack(crops[k:])


def _median_ms(times: list[float]) -> float:
    return 1e3 * statistics.median(times)


def _loader_ms_per_volume(stream: VoCoStream, batch_size: int, batches: int, warmup: int = 2) -> float:
    """Throughput of the real DataLoader with one worker (the main process only waits)."""
    loader = make_loader(stream, batch_size, num_workers=1, pin_memory=False)
    iterator = iter(loader)
    try:
        for _ in range(warmup):
            next(iterator)
        start = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        return 1e3 * (time.perf_counter() - start) / (batches * batch_size)
    finally:
        iterator._shutdown_workers()  # persistent worker: stop it now, not at interpreter exit


def benchmark_sampling(sources, layout: CropLayout = V2_LAYOUT, augment: AugmentConfig | None = None,
                       volumes: int = 30, reference_volumes: int = 6, batch_size: int = 2, loader_batches: int = 10,
                       inplane_axes=(1, 2), seed: int = 0) -> dict:
    """Per-volume cost of window sampling + augmentation against the references, in one run.

    Args:
        sources: dataset sources (``nnunet_voco.nnunet.DatasetSource`` or anything with ``name``,
            ``identifiers`` and ``open()``).
        layout: crop size, grid and number of targets (default: v2, 3x3 grid of 64^3 + 2 targets).
        augment: augmentation (default ``AugmentConfig()``: the v2 preset's, as ``voco_pretrain`` uses).
        volumes: volumes timed in-process (after 2 untimed).
        reference_volumes: volumes of the naive reference (and full-case reads).
        batch_size: volumes per DataLoader batch.
        loader_batches: batches timed through the DataLoader with one worker (0 skips it).
        inplane_axes: axes rot90 rotates in.
        seed: window and augmentation seed.

    Returns:
        dict with ``ms_per_volume`` (DataLoader, one worker, or in-process when skipped),
        ``in_process_ms_per_volume``, ``window_read_ms`` (reading the window alone),
        ``naive_ms_per_volume``, ``full_case_read_ms``, ``speedup_vs_naive``,
        ``max_read_fraction_of_window`` (largest single read / window voxels; 1.0 = the window
        only), ``max_read_fraction_of_case``, ``window``, ``crops_per_volume``, ``volumes``.
    """
    augment = augment or AugmentConfig()
    reads = []  # (voxels read, voxels of the case) per read of a case array
    recording = [_RecordingSource(s, reads) for s in sources]
    stream = VoCoStream(WindowSampler(recording, layout), seed, augment=augment, inplane_axes=inplane_axes)
    window_only = WindowSampler(sources, layout)
    rng, generator = stream.generators()
    ref_rng = np.random.default_rng(seed + 1)
    datasets = [s.open() for s in sources]
    cases = [(d, ident) for d, s in zip(datasets, sources) for ident in s.identifiers]
    ours, window_ms, naive, full = [], [], [], []
    for i in range(volumes + 2):
        t0 = time.perf_counter()
        stream.make_sample(rng, generator)
        t1 = time.perf_counter()
        window_only.sample_window(rng)
        t2 = time.perf_counter()
        if i >= 2:
            ours.append(t1 - t0)
            window_ms.append(t2 - t1)
        if i < reference_volumes:
            dataset, identifier = cases[i % len(cases)]
            t0 = time.perf_counter()
            naive_sample(dataset, identifier, layout, augment, ref_rng, inplane_axes)
            t1 = time.perf_counter()
            np.asarray(dataset.load_case(identifier)[0][:])
            naive.append(t1 - t0)
            full.append(time.perf_counter() - t1)
    window_voxels = int(np.prod(layout.window)) * int(cases[0][0].load_case(cases[0][1])[0].shape[0])
    in_process = _median_ms(ours)
    loader_ms = (_loader_ms_per_volume(VoCoStream(WindowSampler(sources, layout), seed, augment=augment,
                                                  inplane_axes=inplane_axes), batch_size, loader_batches)
                 if loader_batches > 0 else None)
    per_volume = loader_ms if loader_ms is not None else in_process
    return {"ms_per_volume": per_volume, "loader_ms_per_volume": loader_ms, "in_process_ms_per_volume": in_process,
            "window_read_ms": _median_ms(window_ms), "naive_ms_per_volume": _median_ms(naive),
            "full_case_read_ms": _median_ms(full), "speedup_vs_naive": _median_ms(naive) / per_volume,
            "max_read_fraction_of_window": max(r for r, _ in reads) / window_voxels,
            "max_read_fraction_of_case": max(r / n for r, n in reads),
            "window": list(layout.window), "crop_size": list(layout.crop_size), "grid": list(layout.grid),
            "crops_per_volume": layout.num_bases + layout.num_targets, "volumes": volumes}


def large_sources():
    """The planned 80 x 256 x 256 benchmark dataset (call :func:`prepare_benchmark_data` first)."""
    from nnunet_voco.nnunet import open_dataset

    return [open_dataset(LARGE["id"], PLANS, "3d_fullres")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=30, help="volumes timed in-process")
    parser.add_argument("--root", default=None, help="data cache folder (default $TMPDIR/nnunet_voco_bench)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    prepare_benchmark_data(args.root)
    print(json.dumps(benchmark_sampling(large_sources(), volumes=args.volumes), indent=1))


if __name__ == "__main__":
    main()
