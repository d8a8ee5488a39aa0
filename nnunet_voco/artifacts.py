"""The file contract of nnunet-voco's outputs: where pre-trained weights live and what they are called.

A pre-training run writes into ``$nnUNet_results/<Dataset>/VoCo__<plans>__<configuration>/``; its
exported encoder is ``voco_encoder.pth`` with the metadata beside it as ``voco_encoder.json``. The
trainers, the export, the weight import and the demo all take these names from here.
"""
from __future__ import annotations

import os

from nnunet_voco.nnunet import results_root

ENCODER_FILE = "voco_encoder.pth"
ENCODER_META_FILE = "voco_encoder.json"


def run_folder_name(plans_name: str, configuration: str) -> str:
    """``VoCo__<plans>__<configuration>``: the run folder's name inside a dataset's results folder."""
    return f"VoCo__{plans_name}__{configuration}"


def run_folder(dataset_name: str, plans_name: str, configuration: str, results: str | None = None) -> str:
    """``$nnUNet_results/<Dataset>/VoCo__<plans>__<configuration>`` (``results`` overrides the root)."""
    return os.path.join(results if results is not None else results_root(), dataset_name,
                        run_folder_name(plans_name, configuration))
