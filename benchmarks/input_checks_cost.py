"""Cost of verifying an unlabelled input (nnunet_voco.pool.input_checks) against preprocessing it for the pool.

    python benchmarks/input_checks_cost.py              # 512 x 512 x 300 CT, .nii.gz, about 2 minutes
    python benchmarks/input_checks_cost.py --shape 300 256 256 --repeats 1

Writes a synthetic int16 CT (body ellipse at 40 HU in air at -1000 HU, noise) with SimpleITK, then
times, on the same file: ``verify_file`` (one streaming gzip inflate, output discarded),
``check_volume`` (min/max per channel of the array as read) and the whole ``preprocess_pool_case``
(read, verify, body mask, nnU-Net's crop/normalise/resample with the BenchLarge ResEnc-M plans of
``benchmarks/data_pipeline.py``, generated and cached on first use). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import data_pipeline  # noqa: E402


def synthetic_ct(shape, spacing, path: str, seed: int = 0) -> None:
    import SimpleITK as sitk

    y, x = (np.linspace(-1, 1, s, dtype=np.float32) for s in shape[1:])
    body = np.broadcast_to(((y[:, None] / 0.8) ** 2 + (x[None, :] / 0.9) ** 2 < 1)[None], shape)
    rng = np.random.default_rng(seed)
    ct = np.where(body, 40, -1000).astype(np.int16) + rng.normal(0, 15, shape).astype(np.int16)
    image = sitk.GetImageFromArray(ct)
    image.SetSpacing(tuple(float(s) for s in spacing))
    sitk.WriteImage(image, path, useCompression=True)


def _time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512), metavar=("Z", "Y", "X"))
    parser.add_argument("--spacing", type=float, nargs=3, default=(0.7, 0.7, 1.0), metavar=("X", "Y", "Z"))
    parser.add_argument("--repeats", type=int, default=3, help="median over this many runs of each check")
    args = parser.parse_args(argv)

    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnunet_voco.pool import input_checks
    from nnunet_voco.pool.case import preprocess_pool_case

    env = data_pipeline.prepare_benchmark_data()
    target = os.path.join(env["nnUNet_preprocessed"], f"Dataset{data_pipeline.LARGE['id']:03d}_"
                                                      f"{data_pipeline.LARGE['name']}")
    plans, dataset_json = load_json(os.path.join(target, data_pipeline.PLANS + ".json")), \
        load_json(os.path.join(target, "dataset.json"))
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "ct_0000.nii.gz")
        synthetic_ct(tuple(args.shape), args.spacing, path)
        data, properties = SimpleITKIO().read_images([path])
        verify_ms = _time(lambda: input_checks.verify_file(path), args.repeats)
        check_ms = _time(lambda: input_checks.check_volume(data, properties["spacing"], 1), args.repeats)
        del data
        start = time.perf_counter()
        out, _, _ = preprocess_pool_case([path], plans, "3d_fullres", dataset_json)
        case_ms = (time.perf_counter() - start) * 1000
        result = {"shape_zyx": list(args.shape), "spacing_xyz": list(args.spacing),
                  "file_mib": round(os.path.getsize(path) / 2 ** 20, 1), "verify_file_ms": round(verify_ms, 1),
                  "check_volume_ms": round(check_ms, 1), "preprocess_pool_case_ms": round(case_ms, 1),
                  "checks_share_of_case": round((verify_ms + check_ms) / case_ms, 4),
                  "preprocessed_shape": list(out.shape), "plans": data_pipeline.PLANS,
                  "target_spacing": plans["configurations"]["3d_fullres"]["spacing"], "cpus": os.cpu_count(),
                  "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
