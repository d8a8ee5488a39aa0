"""nnU-Net's folder variables (``nnUNet_preprocessed``, ``nnUNet_results``), read with a one-line error when unset."""
from __future__ import annotations

import os

from nnunet_voco.errors import UserInputError


def env_folder(name: str) -> str:
    """The value of the nnU-Net folder variable ``name``.

    Raises:
        UserInputError: the variable is not set (the message says how to set it).
    """
    value = os.environ.get(name)
    if not value:
        raise UserInputError(f"environment variable {name} is not set; export it to the nnU-Net {name[7:]} folder "
                             f"(see nnU-Net's documentation/setting_up_paths.md)")
    return value


def preprocessed_root() -> str:
    return env_folder("nnUNet_preprocessed")


def results_root() -> str:
    return env_folder("nnUNet_results")
