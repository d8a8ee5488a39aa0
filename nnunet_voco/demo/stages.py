"""The stages of ``voco_demo``: the command each stage runs and the outputs that mark it done.

Everything runs through the commands a user would type, on a synthetic CT-like phantom
(:mod:`nnunet_voco.demo.phantom`; not patient data). Stage, command, and the output that marks it done:

- ``data``: ``nnunet_voco.demo.phantom.write_nnunet_raw_dataset`` (in-process); the raw ``dataset.json``
  with this run size's seeds and every image file. Training and held-out cases both go to
  ``imagesTr``/``labelsTr``; the split below keeps them apart.
- ``plan``: ``nnUNetv2_plan_and_preprocess -d ID -c 3d_fullres -np 1 -npfp 1``; the plans and every
  preprocessed case. Then the demo writes ``splits_final.json`` (see below).
- ``pool``: ``voco_preprocess_unlabeled -i RAW/imagesUnlabelled -d ID -o POOL -np 1`` on images
  written without labels, preprocessed with the labelled dataset's plans; ``voco_pool.json``.
- ``pretrain``: ``voco_pretrain -d POOL --val_cases N --val_every S ...``: pre-training sees only the
  unlabelled pool (never a labelled or held-out case) and measures the held-out position accuracy
  of the pretext task on ``N`` pool cases it does not train on; ``voco_encoder.pth``. The trainers
  find these weights because the pool was built with the labelled dataset's plans.
- ``train_<arm>_s<seed>``: ``nnUNetv2_train ID 3d_fullres SEED -tr <trainer>_demo`` for the arms
  ``frozen_voco`` / ``frozen_scratch`` (frozen-encoder probe: nnUNetTrainerVoCoFrozen vs
  nnUNetTrainerVoCoFrozenScratch) and ``voco`` / ``scratch`` (full fine-tuning: nnUNetTrainerVoCo vs
  nnUNetTrainerVoCoScratch); done when ``fold_SEED/validation/summary.json`` exists.

Split and seeds: ``splits_final.json`` holds ``N_SPLIT_FOLDS`` identical folds (the same training
cases, the held-out cases as validation). The demo trainers seed torch/numpy/random with the fold
number (:mod:`nnunet_voco.trainers.demo_trainers`), so folds 0, 1, 2 are three seeds, and nnU-Net's
own final validation (mean Dice per class over the held-out cases, no test-time mirroring) is the
result. The held-out cases take part in nnU-Net's dataset fingerprint (intensity statistics for the
CT normalisation), as validation cases always do; their labels are never trained on.

Re-entrancy: a stage whose outputs exist is reused (the output says "reusing") unless a stage it
depends on ran in this invocation; an interrupted pre-training is continued (``--c``), a training
whose final checkpoint exists but whose validation is missing only validates (``--val``).

The sizes of each run (phantom, pool, pre-training, seeds) and what chose them are in
:mod:`nnunet_voco.demo.run_sizes`; the arms in :mod:`nnunet_voco.demo.arms`.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections.abc import Callable

from nnunet_voco import artifacts
from nnunet_voco.demo.arms import ARMS, PRETRAINED_ARMS
from nnunet_voco.demo.folders import CONFIGURATION, PLANS, DemoFolders
from nnunet_voco.demo.phantom import write_nnunet_raw_dataset
from nnunet_voco.demo.run_sizes import PRETRAIN_AUGMENTATION
from nnunet_voco.pool.provenance import PROVENANCE_FILE
from nnunet_voco.storage.atomic_files import write_json_atomic

N_SPLIT_FOLDS = 6  # identical folds: 0-2 for the report, 3-5 for tuning


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step of the demo.

    Attributes:
        key: Short name used in the table, the state file and the log file name.
        title: What the stage does, printed in its banner.
        command: Builds the command line from ``fresh`` (True: a stage it needs ran in this invocation,
            so start over instead of continuing). With ``action`` set it is only printed.
        is_done: True when the stage's outputs exist.
        needs: Keys of the stages whose outputs this one reads.
        action: Runs the step in this process instead of ``command`` (same effect, no start-up cost).
        after: In-process follow-up run after the command and on reuse (idempotent); returns what it did.
        tidy: Removes, after the stage and on reuse, files that neither a re-run nor the report needs
            (idempotent); returns what it freed, or "".
    """

    key: str
    title: str
    command: Callable[[bool], list[str]]
    is_done: Callable[[], bool]
    needs: tuple[str, ...] = ()
    action: Callable[[], None] | None = None
    after: Callable[[], str] | None = None
    tidy: Callable[[], str] | None = None


def _count_cases(folder: str) -> int:
    return len([f for f in glob.glob(os.path.join(folder, "*.b2nd")) if not f.endswith("_seg.b2nd")])


def _seeds(seeds: tuple[int, ...]) -> str:
    """Python source for a seed list, short for contiguous runs."""
    if len(seeds) > 3 and list(seeds) == list(range(seeds[0], seeds[-1] + 1)):
        return f"list(range({seeds[0]}, {seeds[-1] + 1}))"
    return repr(list(seeds))


def _phantom_call(folders: DemoFolders) -> str:
    """The ``write_nnunet_raw_dataset`` call of the data stage, as Python source (double quotes, for a shell)."""
    p = folders.run_size
    return (f"from nnunet_voco.demo.phantom import write_nnunet_raw_dataset; write_nnunet_raw_dataset("
            f"{json.dumps(folders.raw)}, {p.dataset_id}, {json.dumps(p.dataset_name)}, labelled_seeds="
            f"{_seeds(p.train_seeds)} + {_seeds(p.heldout_seeds)}, unlabelled_seeds={_seeds(p.unlabelled_seeds)}, "
            f"shape={p.shape})")


def _write_phantom(folders: DemoFolders) -> None:
    p = folders.run_size
    write_nnunet_raw_dataset(folders.raw, p.dataset_id, p.dataset_name, list(p.labelled_seeds),
                             list(p.unlabelled_seeds), shape=p.shape)


def _phantom_is_current(folders: DemoFolders) -> bool:
    """True when the raw dataset was written for this run size's seeds and shape and no file is missing."""
    path = os.path.join(folders.raw_dataset, "dataset.json")  # written last by the phantom writer
    if not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as f:
        phantom = json.load(f).get("phantom", {})
    p = folders.run_size
    expected = {"labelled_seeds": list(p.labelled_seeds), "unlabelled_seeds": list(p.unlabelled_seeds),
                "shape_zyx": list(p.shape)}
    n = len(p.labelled_seeds)
    counts = {"imagesTr": n, "labelsTr": n, "imagesUnlabelled": len(p.unlabelled_seeds)}
    files = {sub: glob.glob(os.path.join(folders.raw_dataset, sub, "*.nii.gz")) for sub in counts}
    return all(phantom.get(k) == v for k, v in expected.items()) and all(len(files[k]) == c for k, c in counts.items())


def _is_planned(folders: DemoFolders) -> bool:
    base = os.path.join(folders.preprocessed, folders.dataset)
    n_cases = len(folders.run_size.labelled_seeds)
    return (os.path.isfile(os.path.join(base, f"{PLANS}.json"))
            and _count_cases(os.path.join(base, f"{PLANS}_{CONFIGURATION}")) == n_cases)


def write_splits(folders: DemoFolders) -> str:
    """Writes ``splits_final.json``: ``N_SPLIT_FOLDS`` identical folds, training vs held-out cases.

    Args:
        folders: The run size's folders.

    Returns:
        A line saying what was written.
    """
    fold = {"train": folders.train_ids(), "val": folders.heldout_ids()}
    path = os.path.join(folders.preprocessed, folders.dataset, "splits_final.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            if json.load(f) == [fold] * N_SPLIT_FOLDS:
                return ""  # already written by an earlier run: nothing to say
    write_json_atomic(path, [fold] * N_SPLIT_FOLDS)
    return (f"wrote splits_final.json: {N_SPLIT_FOLDS} identical folds (fold = seed), {len(fold['train'])} training "
            f"cases, validation on the {len(fold['val'])} held-out cases")


def build_stages(folders: DemoFolders, device: str) -> list[Stage]:
    """The demo's stages in execution order.

    Args:
        folders: Paths of the run size being run.
        device: ``cpu`` or ``cuda``, passed to the commands that train.

    Returns:
        The stages; each one's ``needs`` refers to earlier stages only. Training stages are ordered
        seed-major, so an interrupted run already holds every arm of the first seeds.
    """
    ds, np = str(folders.run_size.dataset_id), str(folders.run_size.processes)
    stages = [
        Stage("data", "write the synthetic phantom in nnU-Net raw format",
              lambda fresh: ["python", "-c", _phantom_call(folders)],
              lambda: _phantom_is_current(folders), action=lambda: _write_phantom(folders)),
        Stage("plan", "plan and preprocess the labelled phantom (nnU-Net)",
              lambda fresh: ["nnUNetv2_plan_and_preprocess", "-d", ds, "-c", CONFIGURATION, "-np", np, "-npfp", np],
              lambda: _is_planned(folders), ("data",), after=lambda: write_splits(folders)),
        Stage("pool", "preprocess the unlabelled images with the target's plans",
              lambda fresh: ["voco_preprocess_unlabeled", "-i", os.path.join(folders.raw_dataset, "imagesUnlabelled"),
                             "-d", ds, "-o", str(folders.run_size.pool_id), "-np", np],
              lambda: _is_pooled(folders), ("plan",)),
        Stage("pretrain", "VoCo pre-training on the unlabelled pool only, with the held-out position monitor",
              lambda fresh: _pretrain_command(folders, device, fresh),
              lambda: os.path.isfile(os.path.join(folders.pretrain_folder, artifacts.ENCODER_FILE)), ("pool",),
              tidy=lambda: _remove(folders.pretrain_folder, PRETRAIN_STATE_FILES)),
    ]
    for seed in folders.run_size.seeds:
        for arm in folders.run_size.arms:
            stages.append(_train_stage(folders, arm, seed, device))
    return stages


# What a finished stage leaves that neither a re-run nor the report reads. Pre-training: the resumable
# states and the stock-nnU-Net copy of the weights (the demo's trainers read voco_encoder.pth). Training: nnU-Net's best-epoch checkpoint (the report
# reads the final validation; checkpoint_final.pth stays, so nnUNetv2_predict works on every run).
PRETRAIN_STATE_FILES = ("checkpoint_latest.pth", "checkpoint_final.pth", "pretrained_network.pth")
TRAIN_SPARE_FILES = ("checkpoint_best.pth", "checkpoint_latest.pth")


def _remove(folder: str, names: tuple[str, ...]) -> str:
    """Deletes ``names`` from ``folder`` when present; returns "freed N MiB" or ""."""
    freed, removed = 0, []
    for name in names:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            freed += os.path.getsize(path)
            os.remove(path)
            removed.append(name)
    return f"removed {', '.join(removed)} ({freed / 2**20:.0f} MiB), which a re-run does not need" if removed else ""


def _is_pooled(folders: DemoFolders) -> bool:
    pool = os.path.join(folders.preprocessed, folders.pool)
    n_cases = len(folders.run_size.unlabelled_seeds)
    return (os.path.isfile(os.path.join(pool, PROVENANCE_FILE))
            and _count_cases(os.path.join(pool, f"{PLANS}_{CONFIGURATION}")) == n_cases)


def _pretrain_command(folders: DemoFolders, device: str, fresh: bool) -> list[str]:
    """``voco_pretrain -d POOL`` with the run size's crops, steps, volumes per step and monitor."""
    p = folders.run_size
    return (["voco_pretrain", "-d", str(p.pool_id), "-device", device, "--num_steps", str(p.pretrain_steps),
             "--lr", str(p.pretrain_lr), "--crop_size", *map(str, p.crop_size), "--grid", *map(str, p.grid),
             "--batch_size", str(p.pretrain_batch_size), "--num_workers", str(p.pretrain_workers),
             *PRETRAIN_AUGMENTATION,
             "--val_cases", str(p.val_cases), "--val_every", str(p.val_every), "--val_windows", str(p.val_windows),
             "--log_every", str(max(1, p.pretrain_steps // 40)), "--save_every", str(max(1, p.pretrain_steps // 4))]
            + _resume_flag(folders.pretrain_folder, fresh))


def _resume_flag(folder: str, fresh: bool) -> list[str]:
    """``--c`` to continue an interrupted pre-training; when an input changed (``fresh``), ``--overwrite``."""
    if not os.path.isfile(os.path.join(folder, "checkpoint_latest.pth")):
        return []
    return ["--overwrite"] if fresh else ["--c"]


def _train_flags(fold: str, fresh: bool) -> list[str]:
    """``--val`` when only the final validation is missing, ``--c`` after an interruption, else nothing."""
    if fresh:
        return []  # nnU-Net starts over and overwrites the folder
    if os.path.isfile(os.path.join(fold, "checkpoint_final.pth")):
        return ["--val"]
    return ["--c"] if os.path.isfile(os.path.join(fold, "checkpoint_latest.pth")) else []


def _train_stage(folders: DemoFolders, arm: str, seed: int, device: str) -> Stage:
    ds, trainer, fold = str(folders.run_size.dataset_id), folders.trainer(arm), folders.fold_folder(arm, seed)
    needs = ("plan", "pretrain") if arm in PRETRAINED_ARMS else ("plan",)
    return Stage(f"train_{arm}_s{seed}", f"{ARMS[arm][1]}, seed (fold) {seed}; Dice on the held-out cases",
                 lambda fresh: ["nnUNetv2_train", ds, CONFIGURATION, str(seed), "-tr", trainer, "-device", device]
                 + _train_flags(fold, fresh),
                 lambda: os.path.isfile(folders.summary(arm, seed)), needs,
                 tidy=lambda: _remove(fold, TRAIN_SPARE_FILES))
