"""``voco_plan_like``: plans for a dataset whose 3d_fullres network is the encoder of given weights.

What is kept from the dataset's base plans (``-p``, default ``nnUNetPlans``): its spacing and
normalisation (CT stays CT; ``spacing="pretraining"`` takes the weights' spacing instead and rescales the
median shape), its resampling, 2d configuration and everything else; ``3d_lowres`` /
``3d_cascade_fullres`` are dropped (their networks would not match the weights).

What is taken from the weights (``topology="weights"``, the default): the encoder exactly, i.e. stages,
widths, blocks, kernels, strides, conv bias and norm, so the load is 1:1 (N/N). ``topology="dataset"``
keeps nnU-Net's kernels, strides and number of stages for the dataset (the base plans) and takes only
the widths and blocks of the weights; the trainer then averages kernels and leaves extra stages random
(:mod:`nnunet_voco.weights.adaptation`), as nnU-Net master's ``DynamicPretrainedTrainer`` does.

The patch size: nnU-Net's own search with the topology held fixed. It starts from the aspect ratio of
the spacing at 256^3 voxels, clipped to the median shape (the base patch for ``topology="dataset"``),
rounded to the nearest multiple of the total stride (at least one), and shrinks the axis that is
largest relative to the median shape by one stride until the network's feature maps fit the planner's
GPU-memory target (:mod:`nnunet_voco.nnunet.planner_budget`); the batch size follows nnU-Net's rule. The
deepest feature map must hold more than one voxel (instance norm cannot train on one): a patch of one
stride per axis grows by a stride along the axis with the most room. Where nnU-Net's own topology
adapts its depth to a small image, a fixed topology cannot: a small dataset gets a patch larger than its
images (nnU-Net pads them), which is the price of loading the weights 1:1.
"""
from __future__ import annotations

import copy
import dataclasses
import re

import numpy as np

from nnunet_voco.nnunet import UserInputError
from nnunet_voco.nnunet.planner_budget import MemoryBudget
from nnunet_voco.weights.architecture import blocks_of, build_network, describe, family_of
from nnunet_voco.weights.target_plans import TargetPlans

DROPPED_CONFIGURATIONS = ("3d_lowres", "3d_cascade_fullres")


def default_plans_name(base: str, weights_path: str) -> str:
    """``<base>_like_<weights file stem>``, with characters nnU-Net folders dislike replaced."""
    stem = re.sub(r"[^A-Za-z0-9]+", "", weights_path.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0])
    return f"{base}_like_{stem[:40] or 'weights'}"


def like_architecture(meta: dict, target: TargetPlans, topology: str) -> dict:
    """The 3d_fullres architecture of the new plans (see the module docstring)."""
    arch = copy.deepcopy(meta["architecture"])
    kwargs = arch["arch_kwargs"]
    if topology == "dataset":
        base = target.arch["arch_kwargs"]
        n = int(base["n_stages"])
        widths, blocks = list(kwargs["features_per_stage"]), blocks_of(arch)
        kwargs.update(n_stages=n, kernel_sizes=copy.deepcopy(base["kernel_sizes"]), strides=copy.deepcopy(base["strides"]),
                      features_per_stage=[widths[min(i, len(widths) - 1)] for i in range(n)])
        key = "n_blocks_per_stage" if "n_blocks_per_stage" in kwargs else "n_conv_per_stage"
        kwargs[key] = [blocks[min(i, len(blocks) - 1)] for i in range(n)]
    n = int(kwargs["n_stages"])
    resenc = family_of(arch).endswith("ResidualEncoderUNet")
    kwargs["n_conv_per_stage_decoder"] = [1 if resenc else 2] * (n - 1)  # nnU-Net's templates
    return {"network_class_name": family_of(arch), "arch_kwargs": kwargs,
            "_kw_requires_import": list(arch.get("arch_kwargs_requires_import") or [])}


def search_patch(architecture: dict, spacing, median_shape, in_channels: int, num_labels: int,
                 budget: MemoryBudget, start=None) -> tuple[list[int], int, float]:
    """nnU-Net's patch search with the topology fixed (module docstring); returns ``(patch, batch, estimate)``."""
    net = build_network({"network_class_name": architecture["network_class_name"],
                         "arch_kwargs": architecture["arch_kwargs"],
                         "arch_kwargs_requires_import": architecture["_kw_requires_import"]}, in_channels, num_labels)
    divisor = np.prod(np.asarray(architecture["arch_kwargs"]["strides"], dtype=int), axis=0)
    median = np.asarray(median_shape, dtype=float)
    if start is None:
        inverse = 1 / np.asarray(spacing, dtype=float)
        start = np.minimum(np.round(inverse * (256 ** 3 / np.prod(inverse)) ** (1 / 3)), median)
    patch = [int(max(d, np.round(p / d) * d)) for p, d in zip(start, divisor)]
    estimate = float(net.compute_conv_feature_map_size(patch))
    while not budget.fits(estimate):
        axes = [a for a in range(3) if patch[a] > divisor[a]]
        if not axes:
            break  # the smallest patch the strides allow: nnU-Net would not train it with batch 2 either
        axis = max(axes, key=lambda a: patch[a] / median[a])
        patch[axis] -= int(divisor[axis])
        estimate = float(net.compute_conv_feature_map_size(patch))
    while np.prod(np.asarray(patch) // divisor) < 2:  # instance norm trains only on more than one deepest voxel
        axis = max(range(3), key=lambda a: median[a] / patch[a])
        patch[axis] += int(divisor[axis])
        estimate = float(net.compute_conv_feature_map_size(patch))
    batch = budget.batch_size(estimate, float(np.prod(patch)), float(np.prod(median)))
    return patch, batch, estimate


@dataclasses.dataclass
class PlanLike:
    """The new plans and what the command reports."""

    plans: dict
    plans_name: str
    lines: list[str]
    data_identifier: str


def plans_like(meta: dict, weights_path: str, target: TargetPlans, plans_name: str, budget: MemoryBudget,
               spacing_source: str = "dataset", topology: str = "weights") -> PlanLike:
    """Build the plans (nothing is written here).

    Raises:
        UserInputError: ``spacing_source="pretraining"`` for weights that record no spacing.
    """
    base = target.config
    spacing, median = list(base["spacing"]), list(base["median_image_size_in_voxels"])
    if spacing_source == "pretraining":
        if not meta.get("spacing"):
            raise UserInputError(f"{weights_path} records no pre-training spacing; keep the dataset's (drop --spacing) "
                                 f"or pass the file the weights came from to voco_import_weights again")
        new = [float(v) for v in meta["spacing"]]
        median = [float(np.round(m * s / n)) for m, s, n in zip(median, spacing, new)]
        spacing = new
    architecture = like_architecture(meta, target, topology)
    start = base["patch_size"] if topology == "dataset" else None
    patch, batch, estimate = search_patch(architecture, spacing, median, target.in_channels, target.num_labels,
                                          budget, start)
    plans = copy.deepcopy(target.plans)
    plans["plans_name"] = plans_name
    for name in DROPPED_CONFIGURATIONS:
        plans["configurations"].pop(name, None)
    config = dict(copy.deepcopy(base))
    config.pop("inherits_from", None)
    identifier = f"{plans_name}_3d_fullres"
    config.update(data_identifier=identifier, patch_size=patch, batch_size=batch, spacing=spacing,
                  median_image_size_in_voxels=median, architecture=architecture)
    plans["configurations"][target.configuration] = config
    plans["voco_plan_like"] = {
        "weights": weights_path, "sha256": (meta.get("imported") or {}).get("sha256"), "base_plans": target.plans_name,
        "topology": topology, "spacing_source": spacing_source, "planner": budget.planner,
        "gpu_memory_target_gb": budget.vram_gb}
    arch = {"network_class_name": architecture["network_class_name"], "arch_kwargs": architecture["arch_kwargs"]}
    lines = [f"network: {describe(arch)} (topology of the {'weights' if topology == 'weights' else 'dataset'})",
             f"spacing {spacing} ({'pre-training' if spacing_source == 'pretraining' else target.plans_name + ', kept'}), "
             f"normalisation {base['normalization_schemes']} (kept), median shape {median}",
             f"patch {patch}, batch {batch} ({budget.planner}'s {budget.vram_gb:g} GB target: feature maps "
             f"{estimate / 1e6:.1f} M feature-map elements per patch, limit {budget.reference * budget.reference_batch / 2 / 1e6:.0f} M)"]
    return PlanLike(plans, plans_name, lines, identifier)


def next_commands(weights_path: str, dataset_id: int, plans_name: str, configuration: str = "3d_fullres") -> list[str]:
    """What to run after ``voco_plan_like`` wrote ``plans_name``."""
    return [f"nnUNetv2_preprocess -d {dataset_id} -plans_name {plans_name} -c {configuration}",
            f"nnUNet_voco_weights={weights_path} nnUNetv2_train {dataset_id} {configuration} 0 -tr nnUNetTrainerVoCo "
            f"-p {plans_name}",
            f"nnUNetv2_predict -i INPUT -o OUTPUT -d {dataset_id} -c {configuration} -tr nnUNetTrainerVoCo -p {plans_name} "
            f"-f 0",
            f"(continued pre-training first: voco_pretrain -d {dataset_id} -p {plans_name} --init {weights_path})"]
