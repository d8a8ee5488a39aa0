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
:mod:`nnunet_voco.nnunet.synthetic_datasets` writes tiny preprocessed datasets directly (nnU-Net's own
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
from nnunet_voco.nnunet.synthetic_datasets import RESENC_M_PLANS, nnunet_folders  # noqa: E402

DATA_VERSION = 1  # bump when the generated data change, so that stale caches are rebuilt
LARGE = {"id": 991, "name": "BenchLarge", "shape": (80, 256, 256), "cases": 4}  # (z, y, x) at 2.5 x 1 x 1 mm
TOY = {"id": 992, "name": "BenchToy", "shape": (16, 48, 48), "cases": 4}
PLANNER, PLANS = "nnUNetPlannerResEncM", RESENC_M_PLANS
V2_LAYOUT = CropLayout((64, 64, 64), (1, 3, 3), 2)  # default v2 geometry: 3x3 in-plane grid + 2 targets


def default_root() -> str:
    """``$TMPDIR/nnunet_voco_bench``: where the generated data are cached between runs."""
    return os.path.join(tempfile.gettempdir(), "nnunet_voco_bench")


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
    proc = subprocess.run(cmd, env=proc_env, capture_output=True, encoding="utf-8", errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {(proc.stdout + proc.stderr)[-2000:]}")
    with open(marker, "w") as f:
        json.dump(stamp, f)
    log(f"benchmark data ready after {time.perf_counter() - start:.0f} s (cached for later runs)")
    return env


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
