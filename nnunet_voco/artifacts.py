"""The file contract of nnunet-voco's outputs: where pre-trained weights live, what they are called,
how they are written and how they are found again.

A pre-training run writes into ``$nnUNet_results/<Dataset>/VoCo__<plans>__<configuration>/``; its
exported encoder is ``voco_encoder.pth`` with the metadata beside it as ``voco_encoder.json`` (the
same dict as the ``meta`` inside the ``.pth``, cheap to read without loading tensors), and, for CNN
encoders, ``pretrained_network.pth`` for stock ``nnUNetv2_train -pretrained_weights``. The trainers
(through :mod:`nnunet_voco.finetune.weights_lookup`), the export, the weight import and the demo all
take these names, the pair writer and the candidate listing from here.

The ``.pth`` format itself (schema version, safe reading) is :mod:`nnunet_voco.checkpoint`'s.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any, Mapping

import torch

from nnunet_voco.checkpoint import encoder_file_content, load_encoder
from nnunet_voco.nnunet import results_root
from nnunet_voco.storage.atomic_files import write_files_atomic

ENCODER_FILE = "voco_encoder.pth"
ENCODER_META_FILE = "voco_encoder.json"
PRETRAINED_NETWORK_FILE = "pretrained_network.pth"


def run_folder_name(plans_name: str, configuration: str) -> str:
    """``VoCo__<plans>__<configuration>``: the run folder's name inside a dataset's results folder."""
    return f"VoCo__{plans_name}__{configuration}"


def run_folder(dataset_name: str, plans_name: str, configuration: str, results: str | None = None) -> str:
    """``$nnUNet_results/<Dataset>/VoCo__<plans>__<configuration>`` (``results`` overrides the root)."""
    return os.path.join(results if results is not None else results_root(), dataset_name,
                        run_folder_name(plans_name, configuration))


def meta_path(weights_path: str) -> str:
    """The JSON sidecar of an encoder file: ``voco_encoder.pth`` -> ``voco_encoder.json`` (any name)."""
    return os.path.splitext(weights_path)[0] + ".json"


def write_encoder(path: str, encoder_state: Mapping[str, torch.Tensor], meta: Mapping[str, Any],
                  heads: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> dict:
    """Write the encoder file ``path`` and its JSON sidecar (:func:`meta_path`) together.

    Both are written to temporary files first and then moved into place, the ``.pth`` before the
    ``.json`` (the candidate listing starts from the ``.json``, so it never finds a sidecar whose
    weights are still being written). On any error no temporary file is left and neither file is
    replaced.

    Args:
        path: the encoder file, normally ``<run folder>/voco_encoder.pth``.
        encoder_state: the encoder's state dict (copied to CPU).
        meta: its metadata (converted to plain types; format and schema version are added).
        heads: optional reusable heads (``{"projector": state dict}``), stored in the ``.pth`` only.

    Returns:
        The metadata as written (the same dict in both files).

    Raises:
        DiskWriteError: the disk is full, read-only or gone; the message names the file.
    """
    content = encoder_file_content(encoder_state, meta, heads)
    write_files_atomic([
        (path, "wb", lambda f: torch.save(content, f)),
        (meta_path(path), "w", lambda f: json.dump(content["meta"], f, indent=2)),
    ])
    return content["meta"]


def read_meta(weights_path: str) -> dict:
    """The metadata of an encoder file: from its JSON sidecar if readable, else from the ``.pth``.

    Raises:
        FileNotFoundError, CheckpointError: no readable sidecar and the ``.pth`` is missing or
            unusable (see :func:`nnunet_voco.checkpoint.load_encoder`).
    """
    meta = _read_json(meta_path(weights_path))
    return meta if meta is not None else load_encoder(weights_path)[1]


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    return content if isinstance(content, dict) else None


@dataclasses.dataclass(frozen=True)
class EncoderArtifact:
    """A finished run's encoder: the ``.pth`` path and the metadata read from its sidecar."""

    path: str
    meta: dict


def list_encoders(plans_name: str, configuration: str, results: str | None = None) -> list[EncoderArtifact]:
    """Every finished run's encoder for these plans and configuration, of any dataset, sorted by path.

    Looks at ``<results>/*/VoCo__<plans>__<configuration>/voco_encoder.json``; a run counts when its
    sidecar is readable and its ``voco_encoder.pth`` exists. Which one a trainer uses is decided
    by :func:`nnunet_voco.finetune.weights_lookup.find_voco_weights`.

    Args:
        plans_name: the plans identifier, e.g. ``nnUNetPlans``.
        configuration: e.g. ``3d_fullres``.
        results: the results root; default ``$nnUNet_results``.

    Raises:
        UserInputError: ``results`` is None and ``nnUNet_results`` is not set.
    """
    root = results if results is not None else results_root()
    pattern = os.path.join(glob.escape(root), "*", run_folder_name(plans_name, configuration), ENCODER_META_FILE)
    found = []
    for sidecar in sorted(glob.glob(pattern)):
        weights = os.path.join(os.path.dirname(sidecar), ENCODER_FILE)
        meta = _read_json(sidecar)
        if meta is not None and os.path.isfile(weights):
            found.append(EncoderArtifact(weights, meta))
    return found
