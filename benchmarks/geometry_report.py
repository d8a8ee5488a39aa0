"""Default VoCo geometry and the padding share of its base crops, new rule vs the old one.

For preprocessed datasets (``-d``) it resolves the layout exactly as ``voco_pretrain`` does
(:func:`nnunet_voco.pretrain.run_setup.resolve_layout` with the real encoder's crop rule and the median of
the real case shapes) and draws windows with the real sampler (``--windows`` per rule, fixed seed)
to measure the share of base-crop voxels that are padding. The "old" rule is the first landing's
default: crop = the plans' patch size, 3x3 grid over the in-plane axes.

For a plan without data (``--synthetic``) the cases are taken to have exactly the median shape
and windows are placed uniformly (no foreground bias), which is what the padding share then
depends on.

    python benchmarks/geometry_report.py -d 990                       # with nnU-Net's folders set
    python benchmarks/geometry_report.py --synthetic 100 512 512 --patch 80 192 160 \\
        --spacing 3 0.8 0.8 --divisor 16 32 32                       # an abdomen-like plan
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from nnunet_voco.voco import geometry  # noqa: E402
from nnunet_voco.voco.sampling import CropLayout, WindowSampler, padding_share, window_origin  # noqa: E402


def _old_layout(patch, spacing) -> CropLayout:
    return CropLayout(tuple(int(p) for p in patch), geometry.default_grid(spacing), 2)


def _synthetic_share(layout: CropLayout, shape, windows: int) -> float:
    rng = np.random.default_rng(0)
    origins = [window_origin(shape, layout.window, {}, 0.0, rng) for _ in range(windows)]
    return float(np.mean([padding_share(shape, o, layout.window) for o in origins]))


def _dataset_share(sources, layout: CropLayout, windows: int) -> float:
    sampler = WindowSampler(sources, layout)
    rng = np.random.default_rng(0)
    return float(np.mean([sampler.sample_window(rng)["padding_share"] for _ in range(windows)]))


def _row(name: str, layout: CropLayout, share: float) -> str:
    return (f"  {name:4s} crop {str(layout.crop_size):16s} grid {str(layout.grid):10s} window {str(layout.window):18s} "
            f"base-crop padding share {100 * share:5.1f}%")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-d", nargs="+", help="preprocessed dataset id(s) (pooled, the first one's plans)")
    p.add_argument("-p", default="nnUNetPlans")
    p.add_argument("-c", default="3d_fullres")
    p.add_argument("--synthetic", type=int, nargs=3, metavar=("X", "Y", "Z"), help="median case shape of a plan")
    p.add_argument("--patch", type=int, nargs=3)
    p.add_argument("--spacing", type=float, nargs=3)
    p.add_argument("--divisor", type=int, nargs=3, help="the encoder's total stride per axis")
    p.add_argument("--windows", type=int, default=200)
    args = p.parse_args()
    if args.synthetic:
        median = tuple(args.synthetic)
        crop, grid, rule = geometry.fitted_layout(median, args.patch, args.spacing, args.divisor)
        new, old = CropLayout(crop, grid, 2), _old_layout(args.patch, args.spacing)
        print(f"synthetic plan: median {median}, patch {tuple(args.patch)}, spacing {tuple(args.spacing)}")
        print(f"  rule: {rule}")
        print(_row("new", new, _synthetic_share(new, median, args.windows)))
        print(_row("old", old, _synthetic_share(old, median, args.windows)))
        return
    from nnunet_voco.encoders import build_encoder
    from nnunet_voco.nnunet import open_datasets
    from nnunet_voco.pretrain.config import PretrainConfig
    from nnunet_voco.pretrain.run_setup import case_shapes, median_case_shape, resolve_layout

    config = PretrainConfig(datasets=tuple(args.d), plans=args.p, configuration=args.c)
    sources = open_datasets(config.datasets, config.plans, config.configuration)
    cm = sources[0].configuration_manager
    bundle = build_encoder("plans", sources[0].plans_manager, cm, sources[0].num_input_channels)
    shapes = case_shapes(sources)
    median = median_case_shape(shapes)
    new, rule = resolve_layout(config, cm, bundle, median)
    old = _old_layout(cm.patch_size, cm.spacing)
    print(f"{', '.join(s.name for s in sources)} ({args.p} {args.c}): {len(shapes)} cases, median {median}, "
          f"patch {tuple(cm.patch_size)}, spacing {tuple(round(float(s), 3) for s in cm.spacing)}, stride "
          f"{bundle.crop_stride}")
    print(f"  rule: {rule}")
    print(_row("new", new, _dataset_share(sources, new, args.windows)))
    print(_row("old", old, _dataset_share(sources, old, args.windows)))


if __name__ == "__main__":
    main()
