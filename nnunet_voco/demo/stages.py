"""The stages of ``voco_demo``: presets, folders, and the command each stage runs.

Everything runs through the commands a user would type, on a synthetic CT-like phantom
(:mod:`nnunet_voco.demo.phantom`; not patient data). Stage, command, and the output that marks it done:

- ``data``: ``nnunet_voco.demo.phantom.write_nnunet_raw_dataset`` (in-process); the raw ``dataset.json``
  with this preset's seeds and every image file. Training and held-out cases both go to
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

Tuning (what chose the budgets and settings below) used other phantom seeds and other folds than the
report: labelled seeds 500-505, held-out 2000-2005, pool 300-323 (dataset 851) and folds 3-5. The
report uses the seeds of ``PRESETS`` and folds 0-2.

Re-entrancy: a stage whose outputs exist is reused (the output says "reusing") unless a stage it
depends on ran in this invocation; an interrupted pre-training is continued (``--c``), a training
whose final checkpoint exists but whose validation is missing only validates (``--val``).

Budget: 2 CPU cores are the target. On CPU, 3-D convolutions dominate, so the phantom is small
(16x48x48, the whole image is one nnU-Net patch) and pre-training uses 16^3 crops. Measured on the
tuning dataset on 2 idle cores: one ``nnUNetv2_train`` costs ~37 s wall (~40 CPU s) besides its
iterations (~11 s start-up; ~22 s final validation, mostly the start of nnU-Net's two spawned
worker pools, each of which re-imports nnU-Net for ~10 s) and ~1 s wall (~2.6 CPU s) per iteration
at batch size 1. Pre-training: ~1 s per step plus ~7 s per held-out evaluation (24 windows). So the
12 runs of 32 iterations cost ~14 min and the whole default run ~20 min on an idle machine; on a
busy one (load 6) a run took 144 s and pre-training 387 s. ``--quick``: ~3.5 min idle, 4.4 min at
load 6.
Each preset has its own dataset ids and trainers, so ``--quick`` and the default run share one work
folder without touching each other's results.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections.abc import Callable

from nnunet_voco.demo.phantom import write_nnunet_raw_dataset

CONFIGURATION = "3d_fullres"
PLANS = "nnUNetPlans"
N_SPLIT_FOLDS = 6  # identical folds: 0-2 for the report, 3-5 for tuning
SYNTHETIC_NOTE = ("SYNTHETIC DATA: procedurally generated CT-like phantom (nnunet_voco.demo.phantom), not patient "
                  "data. The numbers show what the pipeline measures, not how well VoCo works on real CT.")

# Pre-training settings of the default demo (single place to change them).
PRETRAIN_STEPS = 250
PRETRAIN_LR = 1e-4
PRETRAIN_BATCH_SIZE = 1
PRETRAIN_VAL_EVERY = 50
# Per-crop flips and rot90 off: on the tuning pool (dataset 851 of /tmp/exp, seed 100, 300 steps, batch 1,
# lr 1e-4) held-out position accuracy went 0.302 -> 0.354 with the official augmentation and 0.302 -> 0.448
# without it (lr 3e-4: 0.323; without the inter-volume term: 0.333). The intensity shift stays (v2: p 0.5).
PRETRAIN_AUGMENTATION = ("--flip_prob", "0", "--rot90_prob", "0")

# Arms: key -> (trainer class without the budget suffix, label). Pairs compared in the report.
ARMS = {"frozen_voco": ("nnUNetTrainerVoCoFrozen", "frozen VoCo encoder"),
        "frozen_scratch": ("nnUNetTrainerVoCoFrozenScratch", "frozen random encoder"),
        "voco": ("nnUNetTrainerVoCo", "VoCo fine-tuned"),
        "scratch": ("nnUNetTrainerVoCoScratch", "from scratch")}
COMPARISONS = (("frozen-encoder probe", "frozen_voco", "frozen_scratch"),
               ("full fine-tuning", "voco", "scratch"))


@dataclasses.dataclass(frozen=True)
class DemoPreset:
    """Sizes of one demo run (phantom, pool, pre-training, seeds) and the trainers that set its budget.

    Attributes:
        name: Preset name; also the sub-folder of the work folder holding its logs and report.
        dataset_id: nnU-Net id of the labelled phantom dataset.
        pool_id: nnU-Net id of the unlabelled pool made from it.
        dataset_name: Name part of ``Dataset{id}_{name}``.
        shape: Phantom size in voxels, (z, y, x).
        train_seeds: Phantom seeds of the labelled training cases.
        heldout_seeds: Phantom seeds of the held-out labelled cases (nnU-Net's validation cases).
        unlabelled_seeds: Phantom seeds of the unlabelled pool images.
        pretrain_steps: ``voco_pretrain --num_steps``.
        pretrain_lr: ``voco_pretrain --lr``.
        val_cases: ``voco_pretrain --val_cases`` (pool cases held out for the position monitor).
        val_every: ``voco_pretrain --val_every``.
        val_windows: ``voco_pretrain --val_windows``.
        crop_size: ``voco_pretrain --crop_size`` in nnU-Net axis order (z, y, x here).
        grid: ``voco_pretrain --grid``; ``grid * crop_size`` equals the phantom shape.
        seeds: Folds (= seeds) trained per arm.
        trainer_suffix: Suffix of the trainers in :mod:`nnunet_voco.trainers.demo_trainers`.
    """

    name: str
    dataset_id: int
    pool_id: int
    dataset_name: str
    shape: tuple[int, int, int]
    train_seeds: tuple[int, ...]
    heldout_seeds: tuple[int, ...]
    unlabelled_seeds: tuple[int, ...]
    pretrain_steps: int
    pretrain_lr: float
    val_cases: int
    val_every: int
    val_windows: int
    crop_size: tuple[int, int, int]
    grid: tuple[int, int, int]
    seeds: tuple[int, ...]
    trainer_suffix: str


# nnU-Net plans a 4-stage PlainConvUNet for 16x48x48 phantoms (total strides 4, 8, 8), so crops must be
# multiples of (4, 8, 8). Grid 1x3x3 over the in-plane axes, 1 on the coarse axis (the TPAMI recipe).
PRESETS = {
    "default": DemoPreset("default", 821, 822, "VoCoDemoPhantom", (16, 48, 48), tuple(range(6)),
                          tuple(range(1000, 1008)), tuple(range(100, 124)), PRETRAIN_STEPS, PRETRAIN_LR, 4,
                          PRETRAIN_VAL_EVERY, 24, (16, 16, 16), (1, 3, 3), (0, 1, 2), "_demo"),
    "quick": DemoPreset("quick", 831, 832, "VoCoDemoQuick", (16, 48, 48), (0, 1, 2), (1000,),
                        tuple(range(100, 104)), 4, PRETRAIN_LR, 1, 2, 2, (16, 16, 16), (1, 3, 3), (0,),
                        "_demoquick"),
}


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
    """

    key: str
    title: str
    command: Callable[[bool], list[str]]
    is_done: Callable[[], bool]
    needs: tuple[str, ...] = ()
    action: Callable[[], None] | None = None
    after: Callable[[], str] | None = None


class DemoFolders:
    """Paths of one preset inside the work folder (nnU-Net's three folders are shared by presets)."""

    def __init__(self, work: str, preset: DemoPreset):
        self.work, self.preset = os.path.abspath(work), preset
        self.raw = os.path.join(self.work, "nnUNet_raw")
        self.preprocessed = os.path.join(self.work, "nnUNet_preprocessed")
        self.results = os.path.join(self.work, "nnUNet_results")
        self.run = os.path.join(self.work, preset.name)
        self.dataset = f"Dataset{preset.dataset_id:03d}_{preset.dataset_name}"
        self.pool = f"Dataset{preset.pool_id:03d}_{preset.dataset_name}Unlabeled"
        self.raw_dataset = os.path.join(self.raw, self.dataset)
        self.pretrain_folder = os.path.join(self.results, self.pool, f"VoCo__{PLANS}__{CONFIGURATION}")

    def trainer(self, arm: str) -> str:
        """nnU-Net trainer name of ``arm`` (a key of :data:`ARMS`)."""
        return ARMS[arm][0] + self.preset.trainer_suffix

    def fold_folder(self, arm: str, seed: int) -> str:
        """nnU-Net's output folder of ``arm``'s training with fold (= seed) ``seed``."""
        return os.path.join(self.results, self.dataset, f"{self.trainer(arm)}__{PLANS}__{CONFIGURATION}",
                            f"fold_{seed}")

    def summary(self, arm: str, seed: int) -> str:
        """nnU-Net's final-validation ``summary.json`` (Dice on the held-out cases) of one run."""
        return os.path.join(self.fold_folder(arm, seed), "validation", "summary.json")

    def train_ids(self) -> list[str]:
        """Case identifiers of the labelled training cases, as the phantom writer names them."""
        return [f"{self.preset.dataset_name}_{i:04d}" for i in range(len(self.preset.train_seeds))]

    def heldout_ids(self) -> list[str]:
        """Case identifiers of the held-out cases (numbered after the training cases)."""
        n = len(self.preset.train_seeds)
        return [f"{self.preset.dataset_name}_{i:04d}" for i in range(n, n + len(self.preset.heldout_seeds))]

    def environment(self) -> dict:
        """Environment of every subprocess: nnU-Net's folders plus the CPU-friendly settings."""
        env = dict(os.environ, nnUNet_raw=self.raw, nnUNet_preprocessed=self.preprocessed,
                   nnUNet_results=self.results, nnUNet_compile="0", PYTHONUNBUFFERED="1")
        env.setdefault("nnUNet_def_n_proc", "1")
        env.setdefault("nnUNet_n_proc_DA", "1")  # 0 would break nnUNetv2_plan_and_preprocess
        env.pop("nnUNet_voco_weights", None)  # the VoCo trainers must find the demo's own weights
        return env


def _count_cases(folder: str) -> int:
    return len([f for f in glob.glob(os.path.join(folder, "*.b2nd")) if not f.endswith("_seg.b2nd")])


def _seeds(seeds: tuple[int, ...]) -> str:
    """Python source for a seed list, short for contiguous runs."""
    if len(seeds) > 3 and list(seeds) == list(range(seeds[0], seeds[-1] + 1)):
        return f"list(range({seeds[0]}, {seeds[-1] + 1}))"
    return repr(list(seeds))


def _labelled_seeds(preset: DemoPreset) -> tuple[int, ...]:
    return preset.train_seeds + preset.heldout_seeds


def _phantom_call(folders: DemoFolders) -> str:
    """The ``write_nnunet_raw_dataset`` call of the data stage, as Python source (double quotes, for a shell)."""
    p = folders.preset
    return (f"from nnunet_voco.demo.phantom import write_nnunet_raw_dataset; write_nnunet_raw_dataset("
            f"{json.dumps(folders.raw)}, {p.dataset_id}, {json.dumps(p.dataset_name)}, labelled_seeds="
            f"{_seeds(p.train_seeds)} + {_seeds(p.heldout_seeds)}, unlabelled_seeds={_seeds(p.unlabelled_seeds)}, "
            f"shape={p.shape})")


def _write_phantom(folders: DemoFolders) -> None:
    p = folders.preset
    write_nnunet_raw_dataset(folders.raw, p.dataset_id, p.dataset_name, list(_labelled_seeds(p)),
                             list(p.unlabelled_seeds), shape=p.shape)


def _phantom_is_current(folders: DemoFolders) -> bool:
    """True when the raw dataset was written for this preset's seeds and shape and no file is missing."""
    path = os.path.join(folders.raw_dataset, "dataset.json")  # written last by the phantom writer
    if not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as f:
        phantom = json.load(f).get("phantom", {})
    p = folders.preset
    expected = {"labelled_seeds": list(_labelled_seeds(p)), "unlabelled_seeds": list(p.unlabelled_seeds),
                "shape_zyx": list(p.shape)}
    n = len(_labelled_seeds(p))
    counts = {"imagesTr": n, "labelsTr": n, "imagesUnlabelled": len(p.unlabelled_seeds)}
    files = {sub: glob.glob(os.path.join(folders.raw_dataset, sub, "*.nii.gz")) for sub in counts}
    return all(phantom.get(k) == v for k, v in expected.items()) and all(len(files[k]) == c for k, c in counts.items())


def _is_planned(folders: DemoFolders) -> bool:
    base = os.path.join(folders.preprocessed, folders.dataset)
    return (os.path.isfile(os.path.join(base, f"{PLANS}.json"))
            and _count_cases(os.path.join(base, f"{PLANS}_{CONFIGURATION}")) == len(_labelled_seeds(folders.preset)))


def write_splits(folders: DemoFolders) -> str:
    """Writes ``splits_final.json``: ``N_SPLIT_FOLDS`` identical folds, training vs held-out cases.

    Args:
        folders: The preset's folders.

    Returns:
        A line saying what was written.
    """
    fold = {"train": folders.train_ids(), "val": folders.heldout_ids()}
    path = os.path.join(folders.preprocessed, folders.dataset, "splits_final.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump([fold] * N_SPLIT_FOLDS, f, indent=2)
    return (f"wrote {path}: {N_SPLIT_FOLDS} identical folds (fold = seed of the demo trainers), each training on "
            f"{len(fold['train'])} labelled cases and validating on the {len(fold['val'])} held-out cases "
            f"{fold['val'][0]}..{fold['val'][-1]}")


def build_stages(folders: DemoFolders, device: str) -> list[Stage]:
    """The demo's stages in execution order.

    Args:
        folders: Paths of the preset being run.
        device: ``cpu`` or ``cuda``, passed to the commands that train.

    Returns:
        The stages; each one's ``needs`` refers to earlier stages only. Training stages are ordered
        seed-major, so an interrupted run already holds every arm of the first seeds.
    """
    ds = str(folders.preset.dataset_id)
    stages = [
        Stage("data", "write the synthetic phantom in nnU-Net raw format",
              lambda fresh: ["python", "-c", _phantom_call(folders)],
              lambda: _phantom_is_current(folders), action=lambda: _write_phantom(folders)),
        Stage("plan", "plan and preprocess the labelled phantom (nnU-Net)",
              lambda fresh: ["nnUNetv2_plan_and_preprocess", "-d", ds, "-c", CONFIGURATION, "-np", "1", "-npfp", "1"],
              lambda: _is_planned(folders), ("data",), after=lambda: write_splits(folders)),
        Stage("pool", "preprocess the unlabelled images with the target's plans",
              lambda fresh: ["voco_preprocess_unlabeled", "-i", os.path.join(folders.raw_dataset, "imagesUnlabelled"),
                             "-d", ds, "-o", str(folders.preset.pool_id), "-np", "1"],
              lambda: _is_pooled(folders), ("plan",)),
        Stage("pretrain", "VoCo pre-training on the unlabelled pool only, with the held-out position monitor",
              lambda fresh: _pretrain_command(folders, device, fresh),
              lambda: os.path.isfile(os.path.join(folders.pretrain_folder, "voco_encoder.pth")), ("pool",)),
    ]
    for seed in folders.preset.seeds:
        for arm in ARMS:
            stages.append(_train_stage(folders, arm, seed, device))
    return stages


def _is_pooled(folders: DemoFolders) -> bool:
    pool = os.path.join(folders.preprocessed, folders.pool)
    return (os.path.isfile(os.path.join(pool, "voco_pool.json"))
            and _count_cases(os.path.join(pool, f"{PLANS}_{CONFIGURATION}")) == len(folders.preset.unlabelled_seeds))


def _pretrain_command(folders: DemoFolders, device: str, fresh: bool) -> list[str]:
    """``voco_pretrain -d POOL`` with the preset's crops, steps and monitor; one volume per step (CPU)."""
    p = folders.preset
    return (["voco_pretrain", "-d", str(p.pool_id), "-device", device, "--num_steps", str(p.pretrain_steps),
             "--lr", str(p.pretrain_lr), "--crop_size", *map(str, p.crop_size), "--grid", *map(str, p.grid),
             "--batch_size", str(PRETRAIN_BATCH_SIZE), "--num_workers", "1", *PRETRAIN_AUGMENTATION,
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
    ds, trainer, fold = str(folders.preset.dataset_id), folders.trainer(arm), folders.fold_folder(arm, seed)
    needs = ("plan", "pretrain") if arm in ("voco", "frozen_voco") else ("plan",)
    return Stage(f"train_{arm}_s{seed}", f"{ARMS[arm][1]}, seed (fold) {seed}; Dice on the held-out cases",
                 lambda fresh: ["nnUNetv2_train", ds, CONFIGURATION, str(seed), "-tr", trainer, "-device", device]
                 + _train_flags(fold, fresh),
                 lambda: os.path.isfile(folders.summary(arm, seed)), needs)
