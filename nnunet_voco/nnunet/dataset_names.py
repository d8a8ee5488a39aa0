"""Dataset ids and names, resolved with nnU-Net's own lookup (``17`` -> ``Dataset017_Liver``)."""
from __future__ import annotations

import os

from nnunet_voco.errors import UserInputError
from nnunet_voco.nnunet.paths import preprocessed_root


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
