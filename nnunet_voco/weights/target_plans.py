"""A dataset's planned network, as the target the weights must fit (``--inspect -d``, ``voco_plan_like``,
``voco_pretrain --init``), and the verdict of that fit.

The target encoder is built on the meta device from the plans (as nnU-Net would build it, channels from
``dataset.json``), so a fit is decided from names and shapes in well under a second, without memory.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from nnunet_voco.nnunet import UserInputError, dataset_name, preprocessed_root, read_plans
from nnunet_voco.weights.adaptation import AdaptationError, TransferPlan, plan_transfer
from nnunet_voco.weights.architecture import build_encoder
from nnunet_voco.weights.encoder_state import to_unique


@dataclasses.dataclass
class TargetPlans:
    """One configuration of a dataset's plans file."""

    dataset_name: str
    plans_name: str
    plans_file: str
    plans: dict  # the JSON as written (what voco_plan_like copies)
    configuration: str
    config: dict  # the configuration with inherits_from resolved
    dataset_json: dict

    @property
    def dataset_id(self) -> int:
        return int(self.dataset_name[7:10])

    @property
    def in_channels(self) -> int:
        names = self.dataset_json.get("channel_names") or self.dataset_json.get("modality") or {}
        return len(names)

    @property
    def num_labels(self) -> int:
        return len(self.dataset_json.get("labels") or {})

    @property
    def arch(self) -> dict:
        a = self.config["architecture"]
        return {"network_class_name": a["network_class_name"], "arch_kwargs": a["arch_kwargs"],
                "arch_kwargs_requires_import": list(a.get("_kw_requires_import") or [])}

    def encoder(self, device: str = "meta"):
        return build_encoder(self.arch, self.in_channels, device)


def read_target(dataset, plans_name: str = "nnUNetPlans", configuration: str = "3d_fullres") -> TargetPlans:
    """Read ``$nnUNet_preprocessed/<D>/<plans_name>.json`` and its configuration.

    Raises:
        UserInputError: dataset, plans or configuration missing (the message names the command), or a
            configuration that is not 3-D.
    """
    name = dataset_name(dataset)
    folder = os.path.join(preprocessed_root(), name)
    plans_file = os.path.join(folder, plans_name + ".json")
    if not os.path.isfile(plans_file):
        raise UserInputError(f"{name} has no plans {plans_name!r} ({plans_file}); run `nnUNetv2_plan_and_preprocess -d "
                             f"{int(name[7:10])} -c {configuration}` (or pass -p with the plans you use)")
    with open(plans_file, encoding="utf-8") as f:
        plans = json.load(f)
    manager = read_plans(plans_file)
    if configuration not in manager.available_configurations:
        raise UserInputError(f"{plans_name} of {name} has no {configuration!r} (it has "
                             f"{', '.join(manager.available_configurations)}); 3-D weights need a 3-D configuration: "
                             f"plan one with `nnUNetv2_plan_experiment -d {int(name[7:10])}`")
    config = dict(manager.get_configuration(configuration).configuration)
    if len(config.get("patch_size") or []) != 3:
        raise UserInputError(f"{configuration!r} of {plans_name} is a 2-D configuration; 3-D weights load only into "
                             f"3d_fullres / 3d_lowres (pass -c 3d_fullres)")
    with open(os.path.join(folder, "dataset.json"), encoding="utf-8") as f:
        dataset_json = json.load(f)
    return TargetPlans(name, plans_name, plans_file, plans, configuration, config, dataset_json)


@dataclasses.dataclass
class Fit:
    """How weights fit a target: ``"1:1"``, ``"channels"`` (only the input channels adapted), ``"adapted"``
    (kernels, stages) or ``"refused"`` (``reason`` says why)."""

    verdict: str
    plan: TransferPlan | None
    reason: str = ""
    source: dict | None = None  # the weights' unique tensors (what apply_transfer takes)


def fit_of(state, meta: dict, target_encoder) -> Fit:
    """Dry-run the adaptation rules from weights (our file's encoder + meta) into ``target_encoder``."""
    source_module = build_encoder(meta["architecture"], meta["num_input_channels"])
    unique = to_unique(state, source_module, "weights")
    try:
        plan = plan_transfer(unique, target_encoder, meta["keys_to_in_proj"])
    except AdaptationError as e:
        return Fit("refused", None, str(e), unique)
    verdict = "1:1" if plan.one_to_one else "channels" if plan.identical_topology else "adapted"
    return Fit(verdict, plan, "", unique)


def fact_warnings(meta: dict, spacing, normalization_schemes) -> list[str]:
    """Differences between the pre-training facts and the target worth a warning (CT stays CT: nothing is
    changed, only said): spacing more than 1.5x apart on an axis, another normalisation family."""
    out = []
    source_spacing = meta.get("spacing")
    if source_spacing and spacing and len(source_spacing) == len(spacing):
        ratio = np.maximum(np.asarray(source_spacing, float), 1e-9) / np.maximum(np.asarray(spacing, float), 1e-9)
        if np.any(ratio > 1.5) or np.any(ratio < 1 / 1.5):
            out.append(f"pre-training spacing {list(source_spacing)} differs from this spacing {list(spacing)} by more "
                       f"than 1.5x on an axis (voco_plan_like --spacing pretraining resamples to it)")
    source_norm = set(meta.get("normalization_schemes") or [])
    if source_norm and normalization_schemes and source_norm != set(normalization_schemes):
        out.append(f"pre-trained with {sorted(source_norm)}, this data uses {list(normalization_schemes)}: the target's "
                   f"normalisation is kept (CT stays CT); expect the first epochs to adapt the stem")
    return out
