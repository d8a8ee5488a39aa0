"""Unlabelled pools: many label-free scans preprocessed exactly like one planned nnU-Net dataset.

VoCo pre-training gains most from the thousands of unlabelled scans that sit beside a few labelled
ones, but nnU-Net's raw format and ``nnUNetv2_plan_and_preprocess`` need a label map per image.
:func:`create_unlabeled_pool` instead borrows a planned TARGET dataset's plans and writes the scans as
a regular preprocessed dataset ``$nnUNet_preprocessed/DatasetNNN_Name/``. The steps live in their own
modules: finding the inputs (:mod:`~nnunet_voco.pool.inputs`), resolving TARGET
(:mod:`~nnunet_voco.pool.target`), preprocessing and saving one case (:mod:`~nnunet_voco.pool.case`,
seg = a body mask, not an annotation), the crash-tolerant process runner
(:mod:`~nnunet_voco.pool.runner`) and the pool's files and provenance
(:mod:`~nnunet_voco.pool.provenance`).

Re-running the same command resumes: finished cases are kept, half-written ones are redone. A lock
(``$nnUNet_preprocessed/.voco_pool_NNN.lock``) refuses a second writer of the same pool id. Inputs are
verified before they are used (:mod:`nnunet_voco.pool.input_checks`: truncated files, constant or
non-finite volumes, 2-D, absurd spacing); a full or read-only disk stops the run with
:class:`~nnunet_voco.storage.disk_errors.DiskWriteError`.
"""
from __future__ import annotations

import functools
import os
import shutil
import time
from typing import Sequence

from nnunet_voco.errors import UserInputError
from nnunet_voco.nnunet import configuration_manager, preprocessed_root
from nnunet_voco.pool.case import case_is_complete, save_pool_case
from nnunet_voco.pool.inputs import IMAGE_ENDINGS, InputCase, find_input_cases
from nnunet_voco.pool.provenance import finish_pool, open_pool
from nnunet_voco.pool.report import PoolReport
from nnunet_voco.pool.runner import run_cases
from nnunet_voco.pool.target import load_target, pool_dataset_name
from nnunet_voco.storage import folder_lock
from nnunet_voco.storage.disk_errors import DiskWriteError, disk_write_error

TMP_FOLDER = ".voco_tmp"  # inside the pool folder; holds half-written cases only


def create_unlabeled_pool(input_folders: Sequence[str], target: str | int, output: str | int,
                          plans_name: str = "nnUNetPlans", configuration: str = "3d_fullres",
                          num_processes: int = 1, dicom: bool = False, progress: bool = True) -> PoolReport:
    """Preprocess unlabelled scans with TARGET's plans into a new (or resumed) pool dataset.

    Args:
        input_folders: folders with images (any format nnU-Net's readers or SimpleITK read).
        target: id or name of the planned dataset whose plans and intensity statistics are used.
        output: id of the pool (named TARGET's name + ``Unlabeled``) or a full ``DatasetNNN_Name``.
        plans_name: plans identifier of TARGET.
        configuration: configuration of those plans.
        num_processes: parallel worker processes; 1 works in this process.
        dicom: also read DICOM series from sub-folders.
        progress: show a tqdm progress bar.

    Returns:
        The :class:`PoolReport`; bad inputs are listed in it and in ``voco_pool.json``, not raised.

    Raises:
        UserInputError: nnUNet_preprocessed unset, TARGET unknown or not planned, unknown configuration,
            the pool id is taken by another dataset, or no images in the input folders.
        FolderBusy: another process is writing the same pool id.
        FileNotFoundError: an input folder does not exist.
        DiskWriteError: the disk is full or not writable.
    """
    preprocessed = preprocessed_root()
    target_name, plans, dataset_json = load_target(preprocessed, target, plans_name, configuration)
    pool_name = pool_dataset_name(output, target_name)
    folders = [os.path.abspath(f) for f in input_folders]
    for folder in folders:
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"input folder {folder} does not exist; check -i")
    cases, skipped = find_input_cases(folders, len(dataset_json["channel_names"]), dicom)
    if not cases and not skipped:
        raise UserInputError(f"no images found in {', '.join(folders)} (looked for {', '.join(IMAGE_ENDINGS)}"
                             f"{'' if dicom else '; DICOM series need --dicom'})")
    pool_folder = os.path.join(preprocessed, pool_name)
    lock = folder_lock.acquire(os.path.join(preprocessed, f".voco_pool_{int(pool_name[7:10]):03d}.lock"),
                               "voco_preprocess_unlabeled", pool_folder)  # one writer per pool id
    try:
        report = PoolReport(pool_name, target_name, pool_folder, plans_name, configuration, skipped=skipped,
                            warnings=[lock.stale] if lock.stale else [])
        _fill_pool(report, folders, cases, plans, configuration, dataset_json, num_processes, progress)
    finally:
        lock.release()
    return report


def _fill_pool(report: PoolReport, folders: list[str], cases: list[InputCase], plans: dict, configuration: str,
               dataset_json: dict, num_processes: int, progress: bool) -> None:
    """Open (or resume) the pool of ``report`` and preprocess the cases it lacks (under the pool's lock)."""
    pool_folder = report.folder
    config = configuration_manager(plans, configuration)
    data_folder = os.path.join(pool_folder, config.data_identifier)
    tmp_folder = os.path.join(pool_folder, TMP_FOLDER)
    try:
        provenance = open_pool(pool_folder, report.dataset_name, report.target_name, plans, report.plans_name,
                               configuration, dataset_json)
        shutil.rmtree(tmp_folder, ignore_errors=True)  # leftovers of a killed run; never a finished case
        os.makedirs(data_folder, exist_ok=True)
        os.makedirs(tmp_folder)
    except OSError as e:
        raise disk_write_error(e, e.filename or pool_folder, f"{pool_folder} must be writable") or e from None

    done = {case.case_id for case in cases if case_is_complete(data_folder, case.case_id)}
    report.already_present = [case.case_id for case in cases if case.case_id in done]
    todo = [case for case in cases if case.case_id not in done]
    work = functools.partial(save_pool_case, plans, configuration, dataset_json, data_folder, tmp_folder,
                             config.patch_size)
    start, failed = time.perf_counter(), False
    try:
        run_cases(todo, work, num_processes, report, progress)
    except BaseException:
        failed = True
        raise
    finally:
        report.seconds = time.perf_counter() - start
        shutil.rmtree(tmp_folder, ignore_errors=True)  # gives the space of half-written cases back
        try:
            finish_pool(pool_folder, data_folder, provenance, folders, report, dataset_json)
        except DiskWriteError:
            if not failed:
                raise  # else the first error (usually the same full disk) is the one to report
