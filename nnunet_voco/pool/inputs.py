"""Finding the unlabelled input images and grouping them into cases.

Files follow nnU-Net's channel convention (``CASE_0000.nii.gz``, ``CASE_0001.nii.gz``... form one
case); a single-channel file may omit the suffix. With ``--dicom`` every DICOM series below the input
folders is one single-channel case. The files themselves are verified later, per case
(:mod:`nnunet_voco.pool.input_checks`).

Nothing that looks like an input vanishes without a word. Every entry of an input folder whose name
has an image ending (:data:`IMAGE_ENDINGS`) but that cannot become a case is listed in the skip list
(and so in ``voco_pool.json``) with its reason (:func:`entry_problem`): a dangling symbolic link (an
unmounted drive), a link loop, a folder or a named pipe, socket or device under an image name, a file
this process may not read, a hidden file. With ``--dicom``, ``.dcm``/``.ima``/``.dicom`` files that
belong to no readable series are listed too. Only an input folder that cannot be listed at all is
refused (:class:`~nnunet_voco.errors.UserInputError`): then nothing in it can be accounted for.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import re
import stat
from typing import Sequence

from nnunet_voco.errors import UserInputError

IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".gipl", ".gipl.gz", ".hdr", ".tif", ".tiff")
DICOM_ENDINGS = (".dcm", ".dicom", ".ima")  # files that name themselves DICOM (series files may have no ending)
_KINDS = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"))

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
        for name in sorted(_list_folder(folder)):
            path = os.path.join(folder, name)
            ending = image_ending(name)
            if not ending:
                continue
            problem = entry_problem(path, dicom)
            if problem is not None:
                if problem:  # "" : a folder --dicom reads as a series
                    skipped.append({"file": path, "reason": problem})
                continue
            match = re.fullmatch(r"(.+)_(\d{4})", name[:-len(ending)])
            case_id, channel = (match[1], int(match[2])) if match else (name[:-len(ending)], None)
            groups.setdefault(case_id, []).append((channel, path))
        for case_id, members in groups.items():
            case, problems = _group_to_case(case_id, members, num_channels, folder)
            cases += [case] if case else []
            skipped += problems
        if dicom:
            series, orphans = _find_dicom_series(folder)
            cases += series
            skipped += orphans
    return _make_ids_unique(cases, skipped), skipped


def _list_folder(folder: str) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError as e:
        raise UserInputError(f"cannot list input folder {folder} ({e.strerror}); make it readable or drop it "
                             f"from -i") from None


def entry_problem(path: str, dicom: bool = False) -> str | None:
    """Why the folder entry ``path`` (named like an image) cannot be read as one, or None when it can.

    Returns ``""`` for a folder that ``--dicom`` reads as DICOM series instead. Only regular files
    are opened (once, to prove that this process may read them); a named pipe would block.
    """
    name = os.path.basename(path)
    if name.startswith("."):
        return "hidden file (its name starts with '.', e.g. a macOS '._' copy); rename it to use it"
    if os.path.islink(path):
        target = os.path.join(os.path.dirname(path), os.readlink(path))
        try:
            os.stat(path)
        except FileNotFoundError:
            return f"dangling link to {os.path.normpath(target)}; is the drive mounted?"
        except OSError as e:
            if e.errno == errno.ELOOP:
                return f"symbolic link loop ({name} -> {os.readlink(path)} leads back to itself)"
            return f"link to {os.path.normpath(target)} cannot be followed ({e.strerror})"
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        return f"cannot be inspected ({e.strerror})"
    if stat.S_ISDIR(mode):
        return "" if dicom else "a folder, not an image file (a DICOM series? pass --dicom)"
    kind = next((k for test, k in _KINDS if test(mode)), None if stat.S_ISREG(mode) else "not a regular file")
    if kind is not None:
        return f"{kind}, not an image file; copy the image into a regular file"
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        return f"not readable ({e.strerror}); check its permissions"
    return None


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


def _find_dicom_series(folder: str) -> tuple[list[InputCase], list[dict]]:
    """Every DICOM series below ``folder`` (each a single-channel case named after its sub-folder), and a
    skip entry for every file named like DICOM (:data:`DICOM_ENDINGS`) that belongs to no readable series."""
    import SimpleITK as sitk

    cases, orphans = [], []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        series_ids = sorted(sitk.ImageSeriesReader.GetGDCMSeriesIDs(root))
        relative = os.path.relpath(root, folder)
        base = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(folder) if relative == "." else relative)
        used: set[str] = set()
        for k, series_id in enumerate(series_ids):
            files_of_series = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(root, series_id))
            used.update(os.path.normpath(f) for f in files_of_series)
            case_id = f"{base}_{k}" if len(series_ids) > 1 else base
            cases.append(InputCase(case_id, (files_of_series,), root, folder))
        for name in sorted(files):
            path = os.path.join(root, name)
            if name.lower().endswith(DICOM_ENDINGS) and os.path.normpath(path) not in used:
                reason = entry_problem(path) or "not part of a readable DICOM series (not DICOM, or a damaged header)"
                orphans.append({"file": path, "reason": reason})
    return cases, orphans


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
