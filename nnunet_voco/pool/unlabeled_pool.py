"""Unlabelled pools: many label-free scans preprocessed exactly like one planned nnU-Net dataset.

VoCo pre-training gains most from the thousands of unlabelled scans that sit beside a few labelled
ones, but nnU-Net's raw format and ``nnUNetv2_plan_and_preprocess`` need a label map per image.
:func:`create_unlabeled_pool` instead borrows a planned TARGET dataset's plans and writes the scans as
a regular preprocessed dataset ``$nnUNet_preprocessed/DatasetNNN_Name/``:

* ``<plans>.json``: TARGET's plans with ``dataset_name`` changed (same plans identifier);
* ``dataset.json``: TARGET's channel names and labels plus a ``voco_unlabeled_pool`` field;
* ``<data_identifier>/``: ``.b2nd`` + ``_seg.b2nd`` + ``.pkl`` per case, written by nnU-Net's own
  preprocessor (``run_case_npy``: transpose, crop to nonzero, TARGET's normalisation and intensity
  statistics, resampling) and nnU-Net's own ``nnUNetDatasetBlosc2.save_case``;
* ``voco_pool.json``: provenance, read back with :func:`read_pool_provenance`.

The seg array is a **body mask, not an annotation** (see :func:`body_mask`): 1 inside the body, 0
outside it, -1 outside the nonzero crop region as in nnU-Net. Its ``class_locations`` for label 1 make
samplers that oversample foreground place crops on the body rather than on air.

Each case is written under temporary names and moved into place with ``os.replace``, the ``.b2nd``
data file last (nnU-Net lists cases by that file), so a killed run never leaves a half case that looks
done, and re-running the same command resumes. A lock (``$nnUNet_preprocessed/.voco_pool_NNN.lock``)
refuses a second writer of the same pool id. Inputs are verified before they are used
(:mod:`nnunet_voco.pool.input_checks`: truncated files, constant or non-finite volumes, 2-D, absurd spacing);
a full or read-only disk stops the run with :class:`~nnunet_voco.storage.disk_errors.DiskWriteError`.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import multiprocessing
import os
import re
import shutil
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterable, Sequence

import numpy as np

from nnunet_voco.storage import folder_lock
from nnunet_voco.pool import input_checks
from nnunet_voco.storage.disk_errors import DiskWriteError, disk_write_error, remove_quietly

SCHEMA_VERSION = 1
PROVENANCE_FILE = "voco_pool.json"
CT_BODY_THRESHOLD_HU = -500.0  # air is about -1000 HU, lung about -800, fat about -100
RESUME_ADVICE = "finished cases are kept; free space there (or make it writable) and run the same command again"
IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".gipl", ".gipl.gz", ".hdr", ".tif", ".tiff")
BODY_MASK_RULE = (f"seg is a body mask, not an annotation: 1 = body (CT channel > {CT_BODY_THRESHOLD_HU:g} HU in the "
                  "raw image; other modalities: channel 0 above Otsu's threshold of its nonzero voxels), 0 = outside "
                  "the body, -1 = outside nnU-Net's nonzero crop region; resampled like an nnU-Net label map")
_WORKER_DIED = "worker process died while preprocessing this case (out of memory or a crash in the reader?)"

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


@dataclasses.dataclass
class PoolReport:
    """What one :func:`create_unlabeled_pool` run did.

    Args:
        dataset_name: the pool's ``DatasetNNN_Name``.
        target_name: the TARGET's ``DatasetNNN_Name``.
        folder: the pool's preprocessed dataset folder.
        plans_name: plans identifier.
        configuration: configuration name.
        written: ids of the cases written in this run.
        already_present: ids of the cases that were complete before this run.
        skipped: ``{"file": ..., "reason": ...}`` per input that was not used.
        seconds: wall time of the preprocessing.
        warnings: notes for the user (e.g. a stale lock of a killed run was taken over).
    """

    dataset_name: str
    target_name: str
    folder: str
    plans_name: str
    configuration: str
    written: list[str] = dataclasses.field(default_factory=list)
    already_present: list[str] = dataclasses.field(default_factory=list)
    skipped: list[dict] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    warnings: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        """Return the end-of-run text: counts, throughput, skipped files, output and next command."""
        rate = len(self.written) / max(self.seconds / 60.0, 1e-9)
        lines = [f"{len(self.written)} cases written, {len(self.skipped)} skipped, {len(self.already_present)} "
                 f"already present ({rate:.1f} cases/min over {self.seconds:.0f} s)"]
        lines += [f"warning: {w}" for w in self.warnings]
        if self.skipped:
            lines.append("skipped:")
            lines += [f"  {s['file']}: {s['reason']}" for s in self.skipped]
        options = "".join(f" {flag} {value}" for flag, value, default in
                          (("-p", self.plans_name, "nnUNetPlans"), ("-c", self.configuration, "3d_fullres"))
                          if value != default)
        lines.append(f"output: {self.folder}")
        lines.append(f"next: voco_pretrain -d {int(self.dataset_name[7:10])} {int(self.target_name[7:10])}{options}")
        return "\n".join(lines)


def read_pool_provenance(preprocessed_dataset_folder: str | os.PathLike) -> dict | None:
    """Read ``voco_pool.json`` of a preprocessed dataset folder.

    Args:
        preprocessed_dataset_folder: ``$nnUNet_preprocessed/DatasetNNN_Name``.

    Returns:
        The provenance dict (``plans_source_dataset`` names the dataset whose plans built the pool), or
        None when the folder is not an unlabelled pool.

    Raises:
        ValueError: the file is not valid JSON or was written by a newer schema.
    """
    path = os.path.join(preprocessed_dataset_folder, PROVENANCE_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            provenance = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is unreadable ({_one_line(e)}); restore it or re-create the pool") from None
    if not isinstance(provenance, dict) or provenance.get("schema_version") != SCHEMA_VERSION:
        version = provenance.get("schema_version") if isinstance(provenance, dict) else None
        raise ValueError(f"{path} has schema_version {version!r}, expected {SCHEMA_VERSION}; "
                         "use the nnunet-voco version that wrote it")
    return provenance


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
    from nnunetv2.preprocessing.cropping.cropping import create_nonzero_mask

    nonzero = create_nonzero_mask(data)
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
            NaN/Inf, constant).
    """
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration)
    reader = plans_manager.image_reader_writer_class
    if not all(isinstance(f, str) and _image_ending(f) in reader.supported_file_endings for f in image_files):
        reader = SimpleITKIO  # reads every format SimpleITK knows, and DICOM series given as a file list
    for f in image_files:
        if isinstance(f, str):
            input_checks.verify_file(f)  # SimpleITK reads a cut-off file as a mostly-zero volume
    try:
        data, properties = reader().read_images([list(f) if isinstance(f, tuple) else f for f in image_files])
    except Exception as e:
        raise ValueError(f"unreadable: {_one_line(e)}") from None
    input_checks.check_volume(data, properties["spacing"], len(dataset_json["channel_names"]))
    seg = body_mask(data, configuration_manager.normalization_schemes)[None].astype(np.int8)
    # Label 1 only, so class_locations holds the body whatever labels TARGET has.
    body_json = {**dataset_json, "labels": {"background": 0, "body": 1}}
    body_json.pop("regions_class_order", None)
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    return preprocessor.run_case_npy(data, seg, properties, plans_manager, configuration_manager, body_json)


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
            ending = _image_ending(name)
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
        ValueError: nnUNet_preprocessed unset, TARGET unknown or not planned, unknown configuration,
            the pool id is taken by another dataset, or no images in the input folders.
        FileNotFoundError: an input folder does not exist.
    """
    from nnunetv2.paths import nnUNet_preprocessed

    if not nnUNet_preprocessed.is_set():
        raise ValueError("nnUNet_preprocessed is not set; export nnUNet_preprocessed=/path/to/nnUNet_preprocessed")
    target_name, plans, dataset_json = _load_target(target, plans_name, configuration)
    pool_name = _pool_name(output, target_name)
    folders = [os.path.abspath(f) for f in input_folders]
    for folder in folders:
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"input folder {folder} does not exist; check -i")
    cases, skipped = find_input_cases(folders, len(dataset_json["channel_names"]), dicom)
    if not cases and not skipped:
        raise ValueError(f"no images found in {', '.join(folders)} (looked for {', '.join(IMAGE_ENDINGS)}"
                         f"{'' if dicom else '; DICOM series need --dicom'})")
    pool_folder = os.path.join(nnUNet_preprocessed, pool_name)
    lock = folder_lock.acquire(os.path.join(nnUNet_preprocessed, f".voco_pool_{int(pool_name[7:10]):03d}.lock"),
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
    data_folder = os.path.join(pool_folder, _configuration_manager(plans, configuration).data_identifier)
    tmp_folder = os.path.join(pool_folder, ".voco_tmp")
    try:
        provenance = _open_pool(pool_folder, report.dataset_name, report.target_name, plans, report.plans_name,
                                configuration, dataset_json)
        shutil.rmtree(tmp_folder, ignore_errors=True)  # leftovers of a killed run; never a finished case
        os.makedirs(data_folder, exist_ok=True)
        os.makedirs(tmp_folder)
    except OSError as e:
        raise disk_write_error(e, e.filename or pool_folder, f"{pool_folder} must be writable") or e from None

    done = {case.case_id for case in cases if _case_is_complete(data_folder, case.case_id)}
    report.already_present = [case.case_id for case in cases if case.case_id in done]
    todo = [case for case in cases if case.case_id not in done]
    work = functools.partial(_process_case, plans, configuration, dataset_json, data_folder, tmp_folder)
    start, failed = time.perf_counter(), False
    try:
        _run_cases(todo, work, num_processes, report, progress)
    except BaseException:
        failed = True
        raise
    finally:
        report.seconds = time.perf_counter() - start
        shutil.rmtree(tmp_folder, ignore_errors=True)  # gives the space of half-written cases back
        try:
            _finish_pool(pool_folder, data_folder, provenance, folders, report, dataset_json)
        except DiskWriteError:
            if not failed:
                raise  # else the first error (usually the same full disk) is the one to report


def _process_case(plans: dict, configuration: str, dataset_json: dict, data_folder: str, tmp_folder: str,
                  case: InputCase) -> str | None:
    """Preprocess and atomically save one case; return None, or the reason it was skipped."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import comp_blosc2_params
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    try:
        data, seg, properties = preprocess_pool_case(case.files, plans, configuration, dataset_json)
        # The same dtypes and chunk/block heuristics as DefaultPreprocessor.run_case_save.
        data = data.astype(np.float32, copy=False)
        seg = seg.astype(np.int16, copy=False)
        patch_size = tuple(_configuration_manager(plans, configuration).patch_size)
        blocks, chunks = comp_blosc2_params(data.shape, patch_size, data.itemsize)
        blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, patch_size, seg.itemsize)
    except ValueError as e:
        return str(e)
    except Exception as e:  # a bad file must never stop the run
        return f"preprocessing failed: {_one_line(e)}"
    tmp, final = os.path.join(tmp_folder, f"{case.case_id}.{os.getpid()}"), os.path.join(data_folder, case.case_id)
    try:
        nnUNetDatasetBlosc2.save_case(data, seg, properties, tmp, chunks=chunks, blocks=blocks,
                                      chunks_seg=chunks_seg, blocks_seg=blocks_seg)
        for suffix in ("_seg.b2nd", ".pkl", ".b2nd"):  # data last: nnU-Net lists cases by their .b2nd file
            os.replace(tmp + suffix, final + suffix)
    except Exception as e:  # blosc2 names no errno: the file system is asked (before the space is freed)
        disk = disk_write_error(e, final + ".b2nd", RESUME_ADVICE)
        for suffix in ("_seg.b2nd", ".pkl", ".b2nd"):
            remove_quietly(tmp + suffix)
        if disk is not None:
            raise disk from None  # stops the run: every further case would fail the same way
        return f"writing failed: {_one_line(e)}"
    return None


def _run_cases(cases: list[InputCase], work: Callable[[InputCase], str | None], num_processes: int,
               report: PoolReport, progress: bool) -> None:
    """Run ``work`` on every case, in worker processes when ``num_processes`` > 1, updating ``report``.

    At most ``num_processes`` cases are in flight. When a worker dies (e.g. killed for memory), the
    cases in flight are retried one at a time in a fresh single worker, which pins the blame exactly.
    """
    from tqdm import tqdm

    bar = tqdm(total=len(cases), desc="Preprocessing unlabelled cases", unit="case", disable=not progress)

    def record(case: InputCase, reason: str | None) -> None:
        if reason is None:
            report.written.append(case.case_id)
        else:
            report.skipped.append({"file": case.source, "reason": reason})
        bar.set_postfix(skipped=len(report.skipped), refresh=False)
        bar.update()

    queue, suspects = deque(cases), deque()
    with bar:
        if num_processes <= 1:
            for case in queue:
                record(case, work(case))
            return
        while queue or suspects:
            source, workers = (suspects, 1) if suspects else (queue, num_processes)
            running: dict = {}
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as executor:
                try:
                    while source or running:
                        while source and len(running) < workers:
                            case = source.popleft()
                            try:
                                running[executor.submit(work, case)] = case
                            except BrokenProcessPool:
                                source.appendleft(case)
                                raise
                        done, _ = wait(running, return_when=FIRST_COMPLETED)
                        for future in done:
                            reason = future.result()  # raises BrokenProcessPool when a worker died
                            record(running.pop(future), reason)
                except BrokenProcessPool:
                    stranded = []
                    for future, case in running.items():
                        if future.done() and future.exception() is None:
                            record(case, future.result())
                        else:
                            stranded.append(case)
                    # Nothing in flight means the pool broke on submit; the next case then takes the
                    # blame or the retry, so that the loop always progresses.
                    stranded = stranded or [source.popleft()]
                    if workers == 1:
                        record(stranded[0], _WORKER_DIED)
                    else:
                        suspects.extend(stranded)


def _load_target(target: str | int, plans_name: str, configuration: str) -> tuple[str, dict, dict]:
    """Resolve TARGET and return its name, plans dict and dataset.json dict (checked for ``configuration``)."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        target_name = maybe_convert_to_dataset_name(target)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"TARGET dataset {target!r} not found ({_one_line(e)[:150]}); "
                         "check the id with `ls $nnUNet_preprocessed $nnUNet_raw`") from None
    target_folder = os.path.join(nnUNet_preprocessed, target_name)
    plans_file = os.path.join(target_folder, plans_name + ".json")
    existing = sorted(f[:-5] for f in os.listdir(target_folder) if f.endswith("Plans.json")) \
        if os.path.isdir(target_folder) else []
    if existing and not os.path.isfile(plans_file):
        raise ValueError(f"plans {plans_name!r} not found for {target_name}; choose one of {existing} with -p")
    if not os.path.isfile(plans_file) or not os.path.isfile(os.path.join(target_folder, "dataset.json")):
        raise ValueError(f"{target_name} is not planned: {plans_file} not found; run `nnUNetv2_plan_and_preprocess "
                         f"-d {int(target_name[7:10])} -c {configuration}` first (with -pl/-overwrite_plans_name for "
                         "other plans)")
    plans = load_json(plans_file)
    available = sorted(plans.get("configurations", {}))
    if configuration not in available:
        raise ValueError(f"configuration {configuration!r} is not in {plans_file}; choose one of {available}")
    return target_name, plans, load_json(os.path.join(target_folder, "dataset.json"))


def _pool_name(output: str | int, target_name: str) -> str:
    """Turn ``517`` into ``Dataset517_<TargetName>Unlabeled``; check a full ``DatasetNNN_Name``."""
    text = str(output)
    if text.isdigit():
        if not 1 <= int(text) <= 999:
            raise ValueError(f"pool id {text} is out of range; nnU-Net dataset ids are 1 to 999")
        return f"Dataset{int(text):03d}_{target_name.split('_', 1)[1]}Unlabeled"
    if not re.fullmatch(r"Dataset\d{3}_[A-Za-z0-9_.-]+", text) or int(text[7:10]) == 0:
        raise ValueError(f"-o {text!r} is neither an id (1-999) nor a name like Dataset517_LiverUnlabeled")
    return text


def _open_pool(pool_folder: str, pool_name: str, target_name: str, plans: dict, plans_name: str,
               configuration: str, dataset_json: dict) -> dict:
    """Create the pool folder with plans, dataset.json and provenance, or check it for a resume."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import find_candidate_datasets

    others = [str(n) for n in find_candidate_datasets(int(pool_name[7:10])) if n != pool_name]
    if others:
        raise ValueError(f"dataset id {int(pool_name[7:10])} is already used by {others[0]}; choose a free id for -o")
    provenance = read_pool_provenance(pool_folder) if os.path.isdir(pool_folder) else None
    pool_plans = {**plans, "dataset_name": pool_name}
    plans_file = os.path.join(pool_folder, plans_name + ".json")
    if provenance is None:
        in_raw = nnUNet_raw.is_set() and os.path.isdir(os.path.join(nnUNet_raw, pool_name))
        if os.path.isdir(pool_folder) or in_raw:
            raise ValueError(f"{pool_name} already exists and is not an unlabelled pool; choose another -o")
        now = datetime.datetime.now().isoformat(timespec="seconds")
        provenance = {"schema_version": SCHEMA_VERSION, "plans_source_dataset": target_name, "plans_name": plans_name,
                      "configuration": configuration, "inputs": [], "num_cases": 0, "skipped": [], "created": now,
                      "body_mask": BODY_MASK_RULE}
        os.makedirs(pool_folder)
        _write_json(plans_file, pool_plans)
        _write_json(os.path.join(pool_folder, "dataset.json"),
                    _pool_dataset_json(dataset_json, pool_name, target_name, 0))
        _write_json(os.path.join(pool_folder, PROVENANCE_FILE), provenance)
        return provenance
    built_from = (provenance["plans_source_dataset"], provenance["plans_name"], provenance["configuration"])
    if built_from != (target_name, plans_name, configuration):
        raise ValueError(f"{pool_name} is a pool built from {' / '.join(built_from)}, not {target_name} / "
                         f"{plans_name} / {configuration}; choose another -o")
    if not os.path.isfile(plans_file) or load_json(plans_file) != pool_plans:
        raise ValueError(f"{target_name}'s {plans_name} changed since {pool_name} was built; the existing cases no "
                         f"longer match, so choose another -o (or delete {pool_folder})")
    return provenance


def _finish_pool(pool_folder: str, data_folder: str, provenance: dict, folders: list[str], report: PoolReport,
                 dataset_json: dict) -> None:
    """Rewrite provenance and dataset.json with this run's inputs, case count and skipped files."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    num_cases = sum(_case_is_complete(data_folder, i) for i in nnUNetDatasetBlosc2.get_identifiers(data_folder))
    provenance.update(inputs=list(dict.fromkeys(provenance["inputs"] + folders)), num_cases=num_cases,
                      skipped=report.skipped, updated=datetime.datetime.now().isoformat(timespec="seconds"))
    _write_json(os.path.join(pool_folder, PROVENANCE_FILE), provenance)
    _write_json(os.path.join(pool_folder, "dataset.json"),
                _pool_dataset_json(dataset_json, report.dataset_name, report.target_name, num_cases))


def _pool_dataset_json(dataset_json: dict, pool_name: str, target_name: str, num_cases: int) -> dict:
    keep = ("channel_names", "labels", "regions_class_order", "file_ending", "overwrite_image_reader_writer")
    return {**{k: dataset_json[k] for k in keep if k in dataset_json}, "numTraining": num_cases,
            "name": pool_name.split("_", 1)[1],
            "description": f"unlabelled pool preprocessed with the plans of {target_name} (nnunet-voco)",
            "voco_unlabeled_pool": {"plans_source_dataset": target_name, "seg": BODY_MASK_RULE}}


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


def _configuration_manager(plans: dict, configuration: str):
    """nnU-Net's ConfigurationManager (resolves ``inherits_from``) for ``configuration`` of ``plans``."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    return PlansManager(plans).get_configuration(configuration)


def _case_is_complete(data_folder: str, case_id: str) -> bool:
    return all(os.path.isfile(os.path.join(data_folder, case_id + s)) for s in (".b2nd", "_seg.b2nd", ".pkl"))


def _image_ending(name: str) -> str:
    lower = name.lower()
    return next((e for e in IMAGE_ENDINGS if lower.endswith(e)), "")


def _write_json(path: str, content: dict) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(content, f, indent=2)
        os.replace(tmp, path)
    except OSError as e:
        disk = disk_write_error(e, path, RESUME_ADVICE)
        remove_quietly(tmp)
        raise disk or e from None


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return f"{type(error).__name__}: {text}"[:300]
