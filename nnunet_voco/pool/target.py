"""The planned TARGET dataset whose plans a pool borrows, and the pool's own dataset name."""
from __future__ import annotations

import os
import re

from batchgenerators.utilities.file_and_folder_operations import load_json

from nnunet_voco.errors import UserInputError
from nnunet_voco.nnunet import UnknownDataset, lookup_dataset_name, plans_configurations, read_plans
from nnunet_voco.pool.reasons import one_line


def load_target(preprocessed_root: str, target: str | int, plans_name: str,
                configuration: str) -> tuple[str, dict, dict]:
    """Resolve TARGET and read its plans and dataset.json, checking that ``configuration`` is planned.

    Args:
        preprocessed_root: ``$nnUNet_preprocessed``.
        target: id or name of the planned dataset.
        plans_name: plans identifier.
        configuration: configuration name.

    Returns:
        ``(target_name, plans, dataset_json)``: the plans as nnU-Net's ``PlansManager`` holds them.

    Raises:
        UserInputError: TARGET unknown, not planned, without these plans or this configuration.
    """
    try:
        target_name = lookup_dataset_name(target)
    except UnknownDataset as e:
        raise UserInputError(f"TARGET dataset {target!r} not found ({one_line(e.nnunet_error)[:150]}); "
                             "check the id with `ls $nnUNet_preprocessed $nnUNet_raw`") from None
    target_folder = os.path.join(preprocessed_root, target_name)
    plans_file = os.path.join(target_folder, plans_name + ".json")
    existing = sorted(f[:-5] for f in os.listdir(target_folder) if f.endswith("Plans.json")) \
        if os.path.isdir(target_folder) else []
    if existing and not os.path.isfile(plans_file):
        raise UserInputError(f"plans {plans_name!r} not found for {target_name}; choose one of {existing} with -p")
    if not os.path.isfile(plans_file) or not os.path.isfile(os.path.join(target_folder, "dataset.json")):
        raise UserInputError(f"{target_name} is not planned: {plans_file} not found; run `nnUNetv2_plan_and_preprocess "
                             f"-d {int(target_name[7:10])} -c {configuration}` first (with -pl/-overwrite_plans_name "
                             "for other plans)")
    plans_manager = read_plans(plans_file)
    available = plans_configurations(plans_manager)
    if configuration not in available:
        raise UserInputError(f"configuration {configuration!r} is not in {plans_file}; choose one of {available}")
    return target_name, plans_manager.plans, load_json(os.path.join(target_folder, "dataset.json"))


def pool_dataset_name(output: str | int, target_name: str) -> str:
    """Turn ``517`` into ``Dataset517_<TargetName>Unlabeled``; check a full ``DatasetNNN_Name``.

    Raises:
        UserInputError: the id is out of range or the text is neither an id nor a dataset name.
    """
    text = str(output)
    if text.isdigit():
        if not 1 <= int(text) <= 999:
            raise UserInputError(f"pool id {text} is out of range; nnU-Net dataset ids are 1 to 999")
        return f"Dataset{int(text):03d}_{target_name.split('_', 1)[1]}Unlabeled"
    if not re.fullmatch(r"Dataset\d{3}_[A-Za-z0-9_.-]+", text) or int(text[7:10]) == 0:
        raise UserInputError(f"-o {text!r} is neither an id (1-999) nor a name like Dataset517_LiverUnlabeled")
    return text
