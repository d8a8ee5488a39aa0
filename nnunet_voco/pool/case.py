"""One unlabelled case: read and verify it, preprocess it as nnU-Net would, save it atomically.

:func:`preprocess_pool_case` runs nnU-Net's own preprocessor with TARGET's plans (transpose, crop to
nonzero, TARGET's normalisation and intensity statistics, resampling), so a pool case equals what
``nnUNetv2_plan_and_preprocess`` makes of the same image as a TARGET case. The seg array written with
it is a **body mask, not an annotation** (:func:`body_mask`): its ``class_locations`` for label 1 make
samplers that oversample foreground place crops on the body rather than on air.

:func:`save_pool_case` writes the case under temporary names and moves it into place with
``os.replace``, the ``.b2nd`` data file last (nnU-Net lists cases by that file), so a killed run never
leaves a half case that looks done.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from nnunet_voco.nnunet import preprocessing, read_plans
from nnunet_voco.pool import input_checks
from nnunet_voco.pool.inputs import InputCase, image_ending
from nnunet_voco.pool.reasons import RESUME_ADVICE, one_line
from nnunet_voco.storage.disk_errors import disk_write_error, remove_quietly

CT_BODY_THRESHOLD_HU = -500.0  # air is about -1000 HU, lung about -800, fat about -100
BODY_MASK_RULE = (f"seg is a body mask, not an annotation: 1 = body (CT channel > {CT_BODY_THRESHOLD_HU:g} HU in the "
                  "raw image; other modalities: channel 0 above Otsu's threshold of its nonzero voxels), 0 = outside "
                  "the body, -1 = outside nnU-Net's nonzero crop region; resampled like an nnU-Net label map")
_CASE_FILES = ("_seg.b2nd", ".pkl", ".b2nd")  # in the order they are moved into place: data last


def body_mask(data: np.ndarray, normalization_schemes: Sequence[str]) -> np.ndarray:
    """Mark the voxels inside the body of a raw (not yet normalised) image.

    Rule: if a channel is CT-normalised, body = that channel > ``CT_BODY_THRESHOLD_HU``; otherwise
    body = channel 0 above Otsu's threshold over its nonzero voxels (the whole nonzero region for a
    constant image). The result is restricted to nnU-Net's nonzero mask, so ``seg >= 0`` after
    ``crop_to_nonzero`` is exactly nnU-Net's nonzero region and mask-based normalisation is unchanged.

    Args:
        data: raw image as read by an nnU-Net reader.
        normalization_schemes: the configuration's normalisation scheme per channel.

    Returns:
        Boolean body mask.

    Shapes:
        data: (C, X, Y, Z); returned: (X, Y, Z).
    """
    nonzero = preprocessing.nonzero_mask(data)
    ct_channels = [c for c, scheme in enumerate(normalization_schemes) if scheme == "CTNormalization"]
    if ct_channels:
        return nonzero & (data[ct_channels[0]] > CT_BODY_THRESHOLD_HU)
    values = data[0][nonzero]
    if values.size == 0 or values.min() == values.max():
        return nonzero
    from skimage.filters import threshold_otsu

    return nonzero & (data[0] > threshold_otsu(values))


def preprocess_pool_case(image_files: Sequence, plans: dict, configuration: str,
                         dataset_json: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read, check and preprocess one unlabelled case with nnU-Net's own preprocessor.

    Args:
        image_files: one entry per channel: a path, or a tuple of DICOM slice files.
        plans: TARGET's plans dict.
        configuration: configuration name, e.g. ``3d_fullres``.
        dataset_json: TARGET's dataset.json dict.

    Returns:
        ``(data, seg, properties)`` as nnU-Net's ``run_case`` returns them; ``seg`` is the body mask.

    Raises:
        ValueError: the image is unusable (truncated, channels, 2-D, too small, implausible spacing,
            NaN/Inf, constant); the message is the reason in the skip list.
    """
    plans_manager = read_plans(plans)
    config = plans_manager.get_configuration(configuration)
    reader = preprocessing.image_reader(plans_manager, [image_ending(f) if isinstance(f, str) else None
                                                        for f in image_files])
    for f in image_files:
        if isinstance(f, str):
            input_checks.verify_file(f)  # SimpleITK reads a cut-off file as a mostly-zero volume
    try:
        data, properties = preprocessing.read_images(reader, image_files)
    except Exception as e:
        raise ValueError(f"unreadable: {one_line(e)}") from None
    input_checks.check_volume(data, properties["spacing"], len(dataset_json["channel_names"]))
    seg = body_mask(data, config.normalization_schemes)[None].astype(np.int8)
    # Label 1 only, so class_locations holds the body whatever labels TARGET has.
    body_json = {**dataset_json, "labels": {"background": 0, "body": 1}}
    body_json.pop("regions_class_order", None)
    return preprocessing.preprocess_case(data, seg, properties, plans_manager, config, body_json)


def save_pool_case(plans: dict, configuration: str, dataset_json: dict, data_folder: str, tmp_folder: str,
                   patch_size: Sequence[int], case: InputCase) -> str | None:
    """Preprocess one case and save it atomically into ``data_folder``.

    Runs in worker processes, so every argument is picklable and a bad file never raises.

    Args:
        plans: TARGET's plans dict.
        configuration: configuration name.
        dataset_json: TARGET's dataset.json dict.
        data_folder: the pool's ``<data_identifier>`` folder.
        tmp_folder: where the case is written before it is moved into place (same file system).
        patch_size: the configuration's patch size (sets the Blosc2 chunks and blocks).
        case: the case to write.

    Returns:
        None when the case was written, else the reason it was skipped.

    Raises:
        DiskWriteError: the disk is full or not writable (every further case would fail the same way).
    """
    try:
        data, seg, properties = preprocess_pool_case(case.files, plans, configuration, dataset_json)
        # The same dtypes and chunk/block heuristics as DefaultPreprocessor.run_case_save.
        data = data.astype(np.float32, copy=False)
        seg = seg.astype(np.int16, copy=False)
        layout = preprocessing.blosc2_layout(data, seg, patch_size)
    except ValueError as e:
        return str(e)
    except Exception as e:  # a bad file must never stop the run
        return f"preprocessing failed: {one_line(e)}"
    tmp, final = os.path.join(tmp_folder, f"{case.case_id}.{os.getpid()}"), os.path.join(data_folder, case.case_id)
    try:
        preprocessing.save_blosc2_case(data, seg, properties, tmp, layout)
        for suffix in _CASE_FILES:
            os.replace(tmp + suffix, final + suffix)
    except Exception as e:  # blosc2 names no errno: the file system is asked (before the space is freed)
        disk = disk_write_error(e, final + ".b2nd", RESUME_ADVICE)
        for suffix in _CASE_FILES:
            remove_quietly(tmp + suffix)
        if disk is not None:
            raise disk from None
        return f"writing failed: {one_line(e)}"
    return None


def case_is_complete(data_folder: str, case_id: str) -> bool:
    """Whether all three files of a case are in place (a killed run may leave some)."""
    return all(os.path.isfile(os.path.join(data_folder, case_id + s)) for s in _CASE_FILES)
