"""Preprocessed datasets as VoCo samples them: located, checked and opened through nnU-Net's own classes.

Everything is read through nnU-Net's API (``PlansManager``, ``ConfigurationManager``,
``infer_dataset_class``), so blosc2 and numpy preprocessed data both work.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Sequence

from nnunet_voco.errors import UserInputError
from nnunet_voco.nnunet.dataset_names import dataset_name
from nnunet_voco.nnunet.paths import preprocessed_root
from nnunet_voco.nnunet.plans import read_plans


@dataclasses.dataclass
class DatasetSource:
    """One preprocessed dataset that VoCo samples from."""

    name: str
    data_folder: str
    plans_file: str
    plans_manager: object  # nnunetv2 PlansManager
    configuration_manager: object  # nnunetv2 ConfigurationManager
    dataset_json: dict
    identifiers: list[str]
    num_input_channels: int
    dataset_class: type

    def open(self):
        """A fresh nnU-Net dataset object (lazy: cases are memory-mapped on demand)."""
        return self.dataset_class(self.data_folder, self.identifiers)


def open_dataset(dataset: str | int, plans_name: str, configuration: str) -> DatasetSource:
    """Locate a preprocessed dataset and its plans; raise a one-line error naming the fix."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    name = dataset_name(dataset)
    folder = os.path.join(preprocessed_root(), name)
    ds_id = int(name[7:10])
    plan_cmd = f"nnUNetv2_plan_and_preprocess -d {ds_id} -c {configuration}"
    if not os.path.isdir(folder):
        raise UserInputError(f"dataset {name} is not preprocessed ({folder} does not exist); run `{plan_cmd}` first")
    plans_file = os.path.join(folder, plans_name + ".json")
    if not os.path.isfile(plans_file):
        not_plans = {"dataset.json", "dataset_fingerprint.json", "splits_final.json"}
        available = sorted(f[:-5] for f in os.listdir(folder)
                           if f.endswith(".json") and f not in not_plans and os.path.isfile(os.path.join(folder, f)))
        planner = " -pl <planner>" if plans_name != "nnUNetPlans" else ""
        raise UserInputError(
            f"plans {plans_name!r} not found for {name} (available: {', '.join(available) or 'none'}); pass -p with "
            f"one of them or run `{plan_cmd}{planner}`"
        )
    pm = read_plans(plans_file)
    if configuration not in pm.available_configurations:
        raise UserInputError(
            f"configuration {configuration!r} is not in {plans_name} of {name} (available: "
            f"{', '.join(pm.available_configurations)}); pass -c with one of them"
        )
    cm = pm.get_configuration(configuration)
    data_folder = os.path.join(folder, cm.data_identifier)
    dataset_json = load_json(os.path.join(folder, "dataset.json"))
    if not os.path.isdir(data_folder) or not os.listdir(data_folder):
        raise UserInputError(f"{name} has plans but no preprocessed data in {data_folder}; run `{plan_cmd}`")
    cls = infer_dataset_class(data_folder)
    identifiers = sorted(cls.get_identifiers(data_folder))
    if not identifiers:
        raise UserInputError(f"{name} has no preprocessed cases in {data_folder}; run `{plan_cmd}`")
    n_in = determine_num_input_channels(pm, cm, dataset_json)
    return DatasetSource(name, data_folder, plans_file, pm, cm, dataset_json, identifiers, n_in, cls)


def open_datasets(datasets: Sequence[str | int], plans_name: str, configuration: str) -> list[DatasetSource]:
    """Open several datasets for pooled pre-training; they must agree on plans and channels.

    The first dataset's plans define the encoder and the crop geometry. Datasets whose spacing,
    normalisation or network differ from the first one are accepted with a warning (their arrays
    are used as preprocessed); a different channel count is an error.
    """
    sources = [open_dataset(d, plans_name, configuration) for d in datasets]
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise UserInputError(f"dataset given twice in -d {' '.join(map(str, datasets))}; list each dataset once")
    first = sources[0]
    for s in sources[1:]:
        if s.num_input_channels != first.num_input_channels:
            raise UserInputError(
                f"{s.name} has {s.num_input_channels} input channels but {first.name} has "
                f"{first.num_input_channels}; pool only datasets with the same channels"
            )
        for field in ("spacing", "normalization_schemes", "network_arch_init_kwargs"):
            a, b = getattr(first.configuration_manager, field), getattr(s.configuration_manager, field)
            if _plain(a) != _plain(b):
                warnings.warn(f"{s.name} differs from {first.name} in {field} ({b} vs {a}); "
                              f"the encoder follows {first.name}'s plans")
    return sources


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
