"""Finding the unlabelled input images and grouping them into cases.

Files follow nnU-Net's channel convention (``CASE_0000.nii.gz``, ``CASE_0001.nii.gz``... form one
case); a single-channel file may omit the suffix. With ``--dicom`` every DICOM series below the input
folders is one single-channel case. The files themselves are verified later, per case
(:mod:`nnunet_voco.pool.input_checks`).
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Sequence

IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".gipl", ".gipl.gz", ".hdr", ".tif", ".tiff")

_CaseFiles = tuple  # one entry per channel: a file path, or a tuple of DICOM slice files


@dataclasses.dataclass(frozen=True)
class InputCase:
    """One unlabelled case found in the input folders.

    Args:
        case_id: identifier of the case in the pool (file name without ending and channel suffix).
        files: one entry per channel, ordered by channel: a file path or a tuple of DICOM slice files.
        source: file or folder shown in reports.
        folder: the input folder the case was found in.
    """

    case_id: str
    files: _CaseFiles
    source: str
    folder: str


def image_ending(name: str) -> str:
    """The image ending of a file name (one of :data:`IMAGE_ENDINGS`, matched case-insensitively), or ``""``."""
    lower = name.lower()
    return next((e for e in IMAGE_ENDINGS if lower.endswith(e)), "")


def find_input_cases(input_folders: Sequence[str], num_channels: int,
                     dicom: bool = False) -> tuple[list[InputCase], list[dict]]:
    """Group the image files of the input folders into cases by nnU-Net's ``_0000`` channel convention.

    ``CASE_0000.nii.gz``, ``CASE_0001.nii.gz``... form one case; a file without a 4-digit suffix is a
    single-channel case named by its stem. Ids found in more than one folder get the folder name as
    prefix. With ``dicom``, every DICOM series below the folders is one single-channel case.

    Args:
        input_folders: folders to scan (files at the top level; DICOM series in any sub-folder).
        num_channels: TARGET's channel count.
        dicom: also look for DICOM series.

    Returns:
        ``(cases, skipped)``; ``skipped`` holds ``{"file", "reason"}`` for files that form no valid case.
    """
    cases: list[InputCase] = []
    skipped: list[dict] = []
    for folder in input_folders:
        groups: dict[str, list[tuple[int | None, str]]] = {}
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            ending = image_ending(name)
            if name.startswith(".") or not ending or not os.path.isfile(path):
                continue
            match = re.fullmatch(r"(.+)_(\d{4})", name[:-len(ending)])
            case_id, channel = (match[1], int(match[2])) if match else (name[:-len(ending)], None)
            groups.setdefault(case_id, []).append((channel, path))
        for case_id, members in groups.items():
            case, problems = _group_to_case(case_id, members, num_channels, folder)
            cases += [case] if case else []
            skipped += problems
        if dicom:
            cases += _find_dicom_series(folder)
    return _make_ids_unique(cases, skipped), skipped


def _group_to_case(case_id: str, members: list[tuple[int | None, str]], num_channels: int,
                   folder: str) -> tuple[InputCase | None, list[dict]]:
    """Turn the files sharing one case id into a case, or into skip entries."""
    plain = [path for channel, path in members if channel is None]
    numbered = sorted((channel, path) for channel, path in members if channel is not None)
    duplicates = plain[1:] + (plain[:1] if numbered else [])
    skipped = [{"file": p, "reason": f"duplicate case id {case_id!r} in the same folder"} for p in duplicates]
    if numbered:
        if [c for c, _ in numbered] == list(range(num_channels)):
            return InputCase(case_id, tuple(p for _, p in numbered), numbered[0][1], folder), skipped
        found = ", ".join(f"_{c:04d}" for c, _ in numbered)
        expected = "_0000" if num_channels == 1 else f"_0000 to _{num_channels - 1:04d}"
        reason = f"wrong channel count: case {case_id!r} has channel files {found}, TARGET expects {expected}"
        return None, skipped + [{"file": p, "reason": reason} for _, p in numbered]
    if num_channels != 1:
        return None, skipped + [{"file": plain[0], "reason": f"no _0000 channel suffix, but TARGET has {num_channels} "
                                                             "channels; name the files CASE_0000, CASE_0001, ..."}]
    return InputCase(case_id, (plain[0],), plain[0], folder), skipped


def _find_dicom_series(folder: str) -> list[InputCase]:
    """Every DICOM series below ``folder``, each a single-channel case named after its sub-folder."""
    import SimpleITK as sitk

    cases = []
    for root, dirs, _ in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        series_ids = sorted(sitk.ImageSeriesReader.GetGDCMSeriesIDs(root))
        relative = os.path.relpath(root, folder)
        base = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(folder) if relative == "." else relative)
        for k, series_id in enumerate(series_ids):
            files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(root, series_id))
            case_id = f"{base}_{k}" if len(series_ids) > 1 else base
            cases.append(InputCase(case_id, (files,), root, folder))
    return cases


def _make_ids_unique(cases: list[InputCase], skipped: list[dict]) -> list[InputCase]:
    """Prefix ids found in several folders with their folder name; keep ids clear of nnU-Net's ``_seg`` suffix."""
    counts: dict[str, int] = {}
    for case in cases:
        counts[case.case_id] = counts.get(case.case_id, 0) + 1
    unique, seen = [], set()
    for case in cases:
        case_id = case.case_id
        if counts[case_id] > 1:
            case_id = f"{os.path.basename(case.folder)}_{case_id}"
        case_id = case_id + "_case" if case_id.endswith("_seg") else case_id
        if case_id in seen:
            skipped.append({"file": case.source, "reason": f"duplicate case id {case_id!r} across input folders"})
            continue
        seen.add(case_id)
        unique.append(dataclasses.replace(case, case_id=case_id))
    return unique
