"""SYNTHETIC stand-in datasets, written straight into nnU-Net's preprocessed layout (tests and benchmarks).

These are not patient data and not nnU-Net's preprocessing of anything: smooth random volumes with a
blob, saved through nnU-Net's own ``nnUNetDatasetBlosc2.save_case`` with the chunk and block shapes
its preprocessor would choose, beside hand-written plans (:func:`synthetic_plans`) or the plans of a
planned template dataset (:func:`make_preprocessed_dataset`). They give ``voco_pretrain``, its set-up
and the benchmarks something real to open without running ``nnUNetv2_plan_and_preprocess``.

Why here: the tests and the benchmark scripts both need them; the benchmarks are scripts (run as
``python benchmarks/x.py``, not a package the tests should import), the tests are not importable
by the benchmarks, and only this package is importable by both. They write nnU-Net's file layout,
so they live behind the nnU-Net door.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Mapping

import numpy as np

RESENC_M_PLANS = "nnUNetResEncUNetMPlans"  # the plans identifier synthetic_plans writes by default


def nnunet_folders(root: str) -> dict:
    """The three nnU-Net folder variables for a tree under ``root`` (folders created)."""
    env = {k: os.path.join(root, k[7:]) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for folder in env.values():
        os.makedirs(folder, exist_ok=True)
    return env


def synthetic_plans(name: str, patch_size, features, strides, blocks, batch_size: int = 2,
                    spacing=(2.5, 1.0, 1.0), plans_name: str = RESENC_M_PLANS) -> dict:
    """Plans of a ResEnc U-Net in nnU-Net 2.8's layout (3d_fullres only), for synthetic datasets.

    ``strides`` has one entry per stage (the first usually ``(1, 1, 1)``); ``features`` and ``blocks``
    as many.
    """
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


def smooth_blob_case(shape, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
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


def ct_like_case(shape: tuple[int, int, int, int], rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A z-scored CT-like case ``(C, X, Y, Z)`` with a bright blob and its ``class_locations``.

    Intensities are quantised to 1/8 so that blosc2 compresses the files well.
    """
    c, x, y, z = shape
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in (x, y, z)], indexing="ij"))
    centre = rng.uniform(-0.4, 0.4, 3).astype(np.float32)[:, None, None, None]
    blob = ((grid - centre) ** 2).sum(0) < 0.1
    body = (grid[1:] ** 2).sum(0) < 0.8
    data = np.where(body, 0.0, -2.0) + 1.5 * blob + np.round(rng.normal(0, 0.2, (x, y, z)) * 8) / 8
    locations = np.argwhere(blob)[:: max(1, int(blob.sum()) // 500)]
    locations = np.concatenate([np.zeros((len(locations), 1), dtype=locations.dtype), locations], axis=1)
    properties = {"spacing": [1.0, 1.0, 1.0], "shape_before_cropping": (x, y, z),
                  "shape_after_cropping_and_before_resampling": (x, y, z),
                  "bbox_used_for_cropping": [[0, x], [0, y], [0, z]], "class_locations": {1: locations}}
    return np.repeat(data[None].astype(np.float32), c, axis=0), properties


def write_synthetic_dataset(preprocessed_root: str, dataset_id: int, name: str, plans: dict,
                            n_cases: int = 2, shape=(16, 48, 48), seed: int = 0) -> str:
    """Write ``Dataset<id>_<name>`` (dataset.json, plans, :func:`smooth_blob_case` cases) into ``nnUNet_preprocessed``.

    Returns:
        The dataset folder.
    """
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2

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
        data, seg, props = smooth_blob_case(shape, rng)
        blocks, chunks = comp_blosc2_params(data.shape, patch, data.itemsize)
        blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, patch, seg.itemsize)
        nnUNetDatasetBlosc2.save_case(data, seg, props, os.path.join(data_folder, f"{name}_{i:03d}"), chunks=chunks,
                                      blocks=blocks, chunks_seg=chunks_seg, blocks_seg=blocks_seg)
    return folder


def make_preprocessed_dataset(preprocessed_root: str, template_folder: str, dataset_id: int, name: str,
                              cases: Mapping[str, tuple[np.ndarray, dict]], plans: str = "nnUNetPlans",
                              configuration: str = "3d_fullres") -> str:
    """Write ``Dataset<id>_<name>`` with the plans of a planned template dataset and the given cases.

    Args:
        preprocessed_root: the ``nnUNet_preprocessed`` folder to write into.
        template_folder: a planned dataset folder (its ``dataset.json`` and ``<plans>.json`` are copied).
        dataset_id: id of the new dataset.
        name: name part of the new dataset folder.
        cases: identifier -> (data ``(C, X, Y, Z)`` float32, nnU-Net properties dict).
        plans: plans identifier to copy.
        configuration: configuration whose data folder is written.

    Returns:
        The new dataset folder.
    """
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = os.path.join(preprocessed_root, f"Dataset{dataset_id:03d}_{name}")
    os.makedirs(folder, exist_ok=True)
    for extra in ("dataset.json", "dataset_fingerprint.json"):
        if os.path.isfile(os.path.join(template_folder, extra)):
            shutil.copy(os.path.join(template_folder, extra), folder)
    with open(os.path.join(template_folder, plans + ".json")) as f:
        plans_dict = json.load(f)
    plans_dict["dataset_name"] = os.path.basename(folder)
    with open(os.path.join(folder, plans + ".json"), "w") as f:
        json.dump(plans_dict, f, indent=2)
    cm = PlansManager(os.path.join(folder, plans + ".json")).get_configuration(configuration)
    data_folder = os.path.join(folder, cm.data_identifier)
    os.makedirs(data_folder, exist_ok=True)
    for identifier, (data, properties) in cases.items():
        for suffix in (".b2nd", "_seg.b2nd", ".pkl"):  # blosc2 does not overwrite
            if os.path.exists(os.path.join(data_folder, identifier + suffix)):
                os.remove(os.path.join(data_folder, identifier + suffix))
        blocks, chunks = comp_blosc2_params(data.shape, cm.patch_size, data.itemsize)
        seg = np.zeros((1,) + data.shape[1:], dtype=np.int8)
        nnUNetDatasetBlosc2.save_case(data.astype(np.float32), seg, properties, os.path.join(data_folder, identifier),
                                      chunks=chunks, blocks=blocks)
    return folder
