"""The files that make a folder of ``$nnUNet_preprocessed`` an unlabelled pool, and their provenance.

A pool ``DatasetNNN_Name`` holds, besides its cases:

* ``<plans>.json``: TARGET's plans with ``dataset_name`` changed (same plans identifier);
* ``dataset.json``: TARGET's channel names and labels plus a ``voco_unlabeled_pool`` field;
* :data:`PROVENANCE_FILE` (``voco_pool.json``): which dataset's plans built the pool, the input
  folders, the case count and the skipped files; read back with :func:`read_pool_provenance`.

Every JSON file is written to a temporary name and moved into place, so a reader sees the old file
or the new one, never half of one; a full or read-only disk raises
:class:`~nnunet_voco.storage.disk_errors.DiskWriteError`.
"""
from __future__ import annotations

import datetime
import json
import os

from batchgenerators.utilities.file_and_folder_operations import load_json

from nnunet_voco.errors import UserInputError
from nnunet_voco.nnunet import datasets_with_id, raw_dataset_exists
from nnunet_voco.nnunet.preprocessing import blosc2_case_identifiers
from nnunet_voco.pool.case import BODY_MASK_RULE, case_is_complete
from nnunet_voco.pool.reasons import RESUME_ADVICE, one_line
from nnunet_voco.pool.report import PoolReport
from nnunet_voco.storage.atomic_files import write_json_atomic

SCHEMA_VERSION = 1
PROVENANCE_FILE = "voco_pool.json"


def read_pool_provenance(preprocessed_dataset_folder: str | os.PathLike) -> dict | None:
    """Read ``voco_pool.json`` of a preprocessed dataset folder.

    Args:
        preprocessed_dataset_folder: ``$nnUNet_preprocessed/DatasetNNN_Name``.

    Returns:
        The provenance dict (``plans_source_dataset`` names the dataset whose plans built the pool), or
        None when the folder is not an unlabelled pool.

    Raises:
        UserInputError: the file is not valid JSON or was written by a newer schema.
    """
    path = os.path.join(preprocessed_dataset_folder, PROVENANCE_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            provenance = json.load(f)
    except (OSError, ValueError) as e:
        raise UserInputError(f"{path} is unreadable ({one_line(e)}); restore it or re-create the pool") from None
    if not isinstance(provenance, dict) or provenance.get("schema_version") != SCHEMA_VERSION:
        version = provenance.get("schema_version") if isinstance(provenance, dict) else None
        raise UserInputError(f"{path} has schema_version {version!r}, expected {SCHEMA_VERSION}; "
                             "use the nnunet-voco version that wrote it")
    return provenance


def open_pool(pool_folder: str, pool_name: str, target_name: str, plans: dict, plans_name: str,
              configuration: str, dataset_json: dict) -> dict:
    """Create the pool folder with plans, dataset.json and provenance, or check it for a resume.

    Args:
        pool_folder: ``$nnUNet_preprocessed/<pool_name>``.
        pool_name: the pool's ``DatasetNNN_Name``.
        target_name: TARGET's ``DatasetNNN_Name``.
        plans: TARGET's plans dict.
        plans_name: plans identifier.
        configuration: configuration name.
        dataset_json: TARGET's dataset.json dict.

    Returns:
        The pool's provenance dict (new, or as read back).

    Raises:
        UserInputError: the id is used by another dataset, the folder is not a pool, or the pool was
            built from other plans (or TARGET's plans changed since).
    """
    others = [n for n in datasets_with_id(int(pool_name[7:10])) if n != pool_name]
    if others:
        raise UserInputError(f"dataset id {int(pool_name[7:10])} is already used by {others[0]}; "
                             "choose a free id for -o")
    provenance = read_pool_provenance(pool_folder) if os.path.isdir(pool_folder) else None
    pool_plans = {**plans, "dataset_name": pool_name}
    plans_file = os.path.join(pool_folder, plans_name + ".json")
    if provenance is None:
        if os.path.isdir(pool_folder) or raw_dataset_exists(pool_name):
            raise UserInputError(f"{pool_name} already exists and is not an unlabelled pool; choose another -o")
        now = datetime.datetime.now().isoformat(timespec="seconds")
        provenance = {"schema_version": SCHEMA_VERSION, "plans_source_dataset": target_name, "plans_name": plans_name,
                      "configuration": configuration, "inputs": [], "num_cases": 0, "skipped": [], "created": now,
                      "body_mask": BODY_MASK_RULE}
        os.makedirs(pool_folder)
        write_json(plans_file, pool_plans)
        write_json(os.path.join(pool_folder, "dataset.json"),
                   pool_dataset_json(dataset_json, pool_name, target_name, 0))
        write_json(os.path.join(pool_folder, PROVENANCE_FILE), provenance)
        return provenance
    built_from = (provenance["plans_source_dataset"], provenance["plans_name"], provenance["configuration"])
    if built_from != (target_name, plans_name, configuration):
        raise UserInputError(f"{pool_name} is a pool built from {' / '.join(built_from)}, not {target_name} / "
                             f"{plans_name} / {configuration}; choose another -o")
    if not os.path.isfile(plans_file) or load_json(plans_file) != pool_plans:
        raise UserInputError(f"{target_name}'s {plans_name} changed since {pool_name} was built; the existing cases "
                             f"no longer match, so choose another -o (or delete {pool_folder})")
    return provenance


def finish_pool(pool_folder: str, data_folder: str, provenance: dict, folders: list[str], report: PoolReport,
                dataset_json: dict) -> None:
    """Rewrite provenance and dataset.json with this run's inputs, case count and skipped files."""
    num_cases = sum(case_is_complete(data_folder, i) for i in blosc2_case_identifiers(data_folder))
    provenance.update(inputs=list(dict.fromkeys(provenance["inputs"] + folders)), num_cases=num_cases,
                      skipped=report.skipped, updated=datetime.datetime.now().isoformat(timespec="seconds"))
    write_json(os.path.join(pool_folder, PROVENANCE_FILE), provenance)
    write_json(os.path.join(pool_folder, "dataset.json"),
               pool_dataset_json(dataset_json, report.dataset_name, report.target_name, num_cases))


def pool_dataset_json(dataset_json: dict, pool_name: str, target_name: str, num_cases: int) -> dict:
    """The pool's dataset.json: TARGET's channels, labels and reader, the case count, and the pool marker."""
    keep = ("channel_names", "labels", "regions_class_order", "file_ending", "overwrite_image_reader_writer")
    return {**{k: dataset_json[k] for k in keep if k in dataset_json}, "numTraining": num_cases,
            "name": pool_name.split("_", 1)[1],
            "description": f"unlabelled pool preprocessed with the plans of {target_name} (nnunet-voco)",
            "voco_unlabeled_pool": {"plans_source_dataset": target_name, "seg": BODY_MASK_RULE}}


def write_json(path: str, content: dict) -> None:
    """Write ``content`` to ``path`` atomically (:func:`~nnunet_voco.storage.atomic_files.write_json_atomic`).

    Raises:
        DiskWriteError: the disk is full or not writable (the message says how to resume).
    """
    write_json_atomic(path, content, RESUME_ADVICE)
