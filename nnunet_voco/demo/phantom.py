"""The synthetic phantom dataset of ``voco_demo``: generated cases written as nnU-Net raw files.

:func:`write_nnunet_raw_dataset` writes a labelled ``Dataset{id}_{name}`` (plus image-only cases for
an unlabelled pool, :func:`write_unlabelled_images`) from the cases of
:mod:`nnunet_voco.demo.phantom_case`, whose :func:`generate_case` and ``LABELS`` are importable from
here too. Every file records its seed and arguments in its NIfTI description, so a re-run skips
finished files and removes phantom files of an earlier run with more seeds.

Everything here is synthetic (no patient data); results on it say that the code runs, not how well
VoCo works on real CT. ``SYNTHETIC_NOTE`` is the sentence every demo output carries to say so.
"""
import json
import os
import re

import numpy as np
import SimpleITK as sitk

from nnunet_voco.demo.phantom_case import (DEFAULT_SHAPE, DEFAULT_SPACING, GENERATOR_VERSION, LABELS,
                                           check_case_arguments, generate_case)

SYNTHETIC_NOTE = ("SYNTHETIC DATA: procedurally generated CT-like phantom (nnunet_voco.demo.phantom), not patient "
                  "data. The numbers show what the pipeline measures, not how well VoCo works on real CT.")
_TAG_PREFIX = "voco-phantom"


def _tag(seed: int, shape: tuple, spacing: tuple, min_slices: int | None) -> str:
    # Kept in the NIfTI descrip field (79 characters), so that a re-run can skip finished files.
    return (f"{_TAG_PREFIX}/{GENERATOR_VERSION} s={seed} {'x'.join(map(str, shape))} "
            f"{'x'.join(f'{v:g}' for v in spacing)} m={min_slices}")


def _read_tag(path: str) -> str:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError:  # missing, or unreadable after an interrupted run: regenerate
        return ""
    return reader.GetMetaData("ITK_FileNotes") if reader.HasMetaDataKey("ITK_FileNotes") else ""


def _write(array: np.ndarray, spacing: tuple, tag: str, path: str) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetMetaData("ITK_FileNotes", tag)
    tmp = path[: -len(".nii.gz")] + ".partial.nii.gz"
    sitk.WriteImage(img, tmp, True)
    os.replace(tmp, path)  # atomic, so an interrupted run never leaves a half-written case


def _write_cases(seeds: list[int], names: list[str], image_dir: str, label_dir: str | None,
                 shape: tuple, spacing: tuple, min_slices: int | None) -> None:
    """Writes ``{name}_0000.nii.gz`` (plus ``{name}.nii.gz`` labels) per seed, skipping current files."""
    folders = [image_dir] + ([label_dir] if label_dir else [])
    for folder in folders:
        os.makedirs(folder, exist_ok=True)
    for seed, name in zip(seeds, names):
        tag = _tag(seed, shape, spacing, min_slices)
        paths = [os.path.join(image_dir, f"{name}_0000.nii.gz")]
        paths += [os.path.join(label_dir, f"{name}.nii.gz")] if label_dir else []
        if all(_read_tag(p) == tag for p in paths):
            continue
        case = generate_case(seed, shape, spacing, min_slices)
        _write(np.rint(case.image).astype(np.int16), case.spacing, tag, paths[0])  # int16, as CT
        if label_dir:
            _write(case.label, case.spacing, tag, paths[1])
    # Remove phantom files of an earlier run with more seeds; nnU-Net would count them as cases.
    expected = {f"{n}_0000.nii.gz" for n in names} | {f"{n}.nii.gz" for n in names}
    for folder in folders:
        for f in sorted(set(os.listdir(folder)) - expected):
            if f.endswith(".nii.gz") and _read_tag(os.path.join(folder, f)).startswith(_TAG_PREFIX):
                os.remove(os.path.join(folder, f))


def _check_seeds(seeds: list[int] | None, what: str) -> list[int]:
    seeds = [int(s) for s in seeds or []]
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise ValueError(f"{what} {seeds!r} must be distinct non-negative integers")
    return seeds


def _check_name(name: str, what: str) -> None:
    # nnU-Net splits identifiers on "_" and "DatasetXXX_" prefixes; keep names unambiguous.
    if not re.fullmatch(r"[A-Za-z0-9-]+(_[A-Za-z0-9-]+)*", name):
        raise ValueError(f"{what} {name!r} must be letters, digits and '-', joined by single '_'")


def write_unlabelled_images(folder: str, seeds: list[int], prefix: str = "unlabelled",
                            shape: tuple[int, int, int] = DEFAULT_SHAPE,
                            spacing: tuple[float, float, float] = DEFAULT_SPACING,
                            min_slices: int | None = None) -> str:
    """Writes images only, as ``{prefix}_{i:04d}_0000.nii.gz``, for an unlabelled pre-training pool.

    Files already written for the same seed and arguments are kept (the NIfTI description records
    them), so re-running is cheap.

    Args:
        folder: Output folder; created if missing.
        seeds: Distinct seeds; image ``i`` uses ``seeds[i]``.
        prefix: Case identifier prefix.
        shape: Volume size in voxels, (z, y, x).
        spacing: Voxel size in mm, (z, y, x); the files store SimpleITK's (x, y, z).
        min_slices: See ``generate_case``.

    Returns:
        ``folder``.

    Raises:
        ValueError: On duplicate or negative seeds, or a bad prefix, shape or spacing.
    """
    seeds = _check_seeds(seeds, "unlabelled seeds")
    _check_name(prefix, "prefix")
    check_case_arguments(tuple(shape), tuple(spacing), min_slices)
    names = [f"{prefix}_{i:04d}" for i in range(len(seeds))]
    _write_cases(seeds, names, folder, None, tuple(shape), tuple(spacing), min_slices)
    return folder


def write_nnunet_raw_dataset(raw_root: str, dataset_id: int, name: str, labelled_seeds: list[int],
                             unlabelled_seeds: list[int] | None = None,
                             test_seeds: list[int] | None = None,
                             shape: tuple[int, int, int] = DEFAULT_SHAPE,
                             spacing: tuple[float, float, float] = DEFAULT_SPACING,
                             min_slices: int | None = None) -> str:
    """Writes ``Dataset{id:03d}_{name}`` in nnU-Net v2 raw format under ``raw_root``.

    Creates ``imagesTr``/``labelsTr``, ``imagesTs``/``labelsTs`` (held-out ground truth, which
    nnU-Net ignores), ``imagesUnlabelled`` (via ``write_unlabelled_images``, prefix
    ``{name}_unlabelled``) and ``dataset.json``. Cases are ``{name}_{i:04d}``, numbered through the
    training then the test seeds. Re-running skips finished files.

    Args:
        raw_root: The ``nnUNet_raw`` folder.
        dataset_id: nnU-Net dataset id, 1..999.
        name: Dataset name (letters, digits and '-', joined by single '_').
        labelled_seeds: Seeds of the labelled training cases; at least one.
        unlabelled_seeds: Seeds of image-only pre-training cases; may overlap ``labelled_seeds``.
        test_seeds: Seeds of held-out cases; must not overlap the other two lists.
        shape: Volume size in voxels, (z, y, x).
        spacing: Voxel size in mm, (z, y, x); the files store SimpleITK's (x, y, z).
        min_slices: See ``generate_case``.

    Returns:
        The dataset folder path.

    Raises:
        ValueError: On a bad id, name, shape or spacing, duplicate seeds, or test seeds that also
            appear in the training or unlabelled seeds (they would leak into training).
    """
    if not isinstance(dataset_id, (int, np.integer)) or not 1 <= dataset_id <= 999:
        raise ValueError(f"dataset_id {dataset_id!r} must be an integer in 1..999")
    _check_name(name, "name")
    labelled, test = _check_seeds(labelled_seeds, "labelled seeds"), _check_seeds(test_seeds, "test seeds")
    unlabelled = _check_seeds(unlabelled_seeds, "unlabelled seeds")
    leaked = sorted(set(test) & (set(labelled) | set(unlabelled)))
    if not labelled or leaked:
        raise ValueError(f"need >= 1 labelled seed (got {labelled}) and test seeds disjoint from the "
                         f"others (shared: {leaked}); pick other seeds")
    check_case_arguments(tuple(shape), tuple(spacing), min_slices)
    shape, spacing = tuple(shape), tuple(spacing)
    folder = os.path.join(raw_root, f"Dataset{dataset_id:03d}_{name}")
    names = [f"{name}_{i:04d}" for i in range(len(labelled) + len(test))]
    _write_cases(labelled, names[: len(labelled)], os.path.join(folder, "imagesTr"),
                 os.path.join(folder, "labelsTr"), shape, spacing, min_slices)
    if test:
        _write_cases(test, names[len(labelled):], os.path.join(folder, "imagesTs"),
                     os.path.join(folder, "labelsTs"), shape, spacing, min_slices)
    if unlabelled:
        write_unlabelled_images(os.path.join(folder, "imagesUnlabelled"), unlabelled,
                                f"{name}_unlabelled", shape, spacing, min_slices)
    meta = {
        "channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": len(labelled),
        "file_ending": ".nii.gz", "name": name,
        "description": "Synthetic CT-like abdominal phantom generated procedurally by nnunet_voco.demo.phantom "
                       f"(generator v{GENERATOR_VERSION}). Not patient data; it exercises the pipeline "
                       "and says nothing about segmentation quality on real CT.",
        "phantom": {"labelled_seeds": labelled, "test_seeds": test, "unlabelled_seeds": unlabelled,
                    "shape_zyx": list(shape), "spacing_zyx": list(spacing), "min_slices": min_slices},
    }
    with open(os.path.join(folder, "dataset.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
    return folder
