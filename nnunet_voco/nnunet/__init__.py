"""The one place that knows nnU-Net's folders, plans and dataset classes.

Everything is read through nnU-Net's own API (``maybe_convert_to_dataset_name``, ``PlansManager``,
``ConfigurationManager``, ``infer_dataset_class``), so blosc2 and numpy preprocessed data both work
and nnU-Net's path variables (lazy ``_EnvPath`` objects in 2.8) are honoured.

User errors raise :class:`UserInputError` (a ``ValueError``) whose message is one line naming the
value and the fix; the command-line programs turn it into exit code 2. nnU-Net's preprocessing of raw
images (readers, preprocessor, Blosc2 case files) is in :mod:`nnunet_voco.nnunet.preprocessing`.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Sequence

from batchgenerators.utilities.file_and_folder_operations import load_json


class UserInputError(ValueError):
    """Bad input from the user: the command prints the message and exits with code 2."""


def _env_folder(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise UserInputError(f"environment variable {name} is not set; export it to the nnU-Net {name[7:]} folder "
                             f"(see nnU-Net's documentation/setting_up_paths.md)")
    return value


def preprocessed_root() -> str:
    return _env_folder("nnUNet_preprocessed")


def results_root() -> str:
    return _env_folder("nnUNet_results")


class UnknownDataset(UserInputError):
    """No dataset folder matches an id; ``nnunet_error`` is the exception nnU-Net's lookup raised."""

    def __init__(self, message: str, nnunet_error: BaseException):
        super().__init__(message)
        self.nnunet_error = nnunet_error


def raw_dataset_exists(name: str) -> bool:
    """Whether ``$nnUNet_raw/<name>`` is a folder (False when nnUNet_raw is not set)."""
    from nnunetv2.paths import nnUNet_raw

    return nnUNet_raw.is_set() and os.path.isdir(os.path.join(nnUNet_raw, name))


def datasets_with_id(dataset_id: int) -> list[str]:
    """Names of the dataset folders with this id in nnUNet_raw, nnUNet_preprocessed and nnUNet_results."""
    from nnunetv2.utilities.dataset_name_id_conversion import find_candidate_datasets

    return [str(name) for name in find_candidate_datasets(dataset_id)]


def lookup_dataset_name(dataset: str | int) -> str:
    """Resolve ``17``, ``"17"`` or ``"Dataset017_Liver"`` with nnU-Net's lookup (a name is returned as given).

    Raises:
        UnknownDataset: no folder has that id, several have, or the text is neither an id nor a name.
    """
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        return maybe_convert_to_dataset_name(dataset if not str(dataset).isdigit() else int(dataset))
    except (RuntimeError, ValueError) as e:
        raise UnknownDataset(
            f"unknown dataset {dataset!r}: no DatasetXXX_Name folder for it in nnUNet_raw, nnUNet_preprocessed "
            f"or nnUNet_results; check the id with `ls $nnUNet_preprocessed`", e
        ) from None


def dataset_name(dataset: str | int) -> str:
    """Resolve ``17``, ``"17"`` or ``"Dataset017_Liver"`` to the dataset folder name."""
    preprocessed_root()
    return lookup_dataset_name(dataset)


def read_plans(plans: str | dict):
    """nnU-Net's ``PlansManager`` for a plans file or dict (the dict stays reachable as ``.plans``)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    return PlansManager(plans)


def plans_configurations(plans_manager) -> list[str]:
    """The configuration names of the plans, sorted; empty for a file that declares none."""
    return sorted(plans_manager.plans.get("configurations", {}))


def configuration_manager(plans: str | dict, configuration: str):
    """nnU-Net's ``ConfigurationManager`` (``inherits_from`` resolved) for ``configuration`` of ``plans``."""
    return read_plans(plans).get_configuration(configuration)


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


def build_plans_network(plans_manager, configuration_manager, num_input_channels: int, num_classes: int = 2):
    """The full segmentation network nnU-Net would build for these plans (deep supervision off)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    return nnUNetTrainer.build_network_architecture(
        plans_manager, configuration_manager, num_input_channels, num_classes, False
    )
