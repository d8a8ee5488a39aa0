"""The stages of ``voco_demo``: presets, folders, and the command each stage runs.

Everything runs through the commands a user would type, in the order of the README, on a synthetic
CT-like phantom (:mod:`nnunet_voco.phantom`; not patient data). Stage, command, and the output that
marks it finished:

- ``data``: ``nnunet_voco.phantom.write_nnunet_raw_dataset`` (in-process); the raw ``dataset.json``
  with this preset's seeds and every image file.
- ``plan``: ``nnUNetv2_plan_and_preprocess -d ID -c 3d_fullres -np 1 -npfp 1``; the plans and every
  preprocessed case. Then the demo writes ``splits_final.json`` (see below).
- ``pool``: ``voco_preprocess_unlabeled -i RAW/imagesUnlabelled -d ID -o POOL -np 1`` on images
  written without labels; ``voco_pool.json`` and every pool case.
- ``pretrain``: ``voco_pretrain -d POOL ID`` with small crops and few steps; ``voco_encoder.pth``.
- ``train_voco`` / ``train_scratch``: ``nnUNetv2_train ID 3d_fullres 0 -tr
  nnUNetTrainerVoCo[Scratch]_demo``; ``fold_0/checkpoint_final.pth``.
- ``predict_*``: ``nnUNetv2_predict -i RAW/imagesTs ... -f 0 -npp 0 -nps 0`` (in-process, no
  worker start-up); one segmentation per held-out image.
- ``evaluate_*``: ``nnUNetv2_evaluate_folder RAW/labelsTs PRED ...``; ``summary.json``.

Split: fold 0 of a ``splits_final.json`` written by the demo. All labelled cases train; nnU-Net's
validation set (needed by its trainer for the per-epoch pseudo Dice and its final validation) is the
first labelled case, so it is *not* held out and its numbers are not reported. The held-out cases
live in ``imagesTs``/``labelsTs`` and are only seen by ``nnUNetv2_predict`` and the evaluation. Fold
``all`` would validate on every training case, which costs more CPU time for nothing the demo uses.

Re-entrancy: a stage whose outputs exist is reused (the output says "reusing") unless a stage it
depends on ran in this invocation; an interrupted pre-training or training is continued (``--c``).
The device is not part of that check: outputs made on CPU are reused by a ``-device cuda`` call.

Budget: 2 CPU cores are the target. On CPU, 3-D convolutions dominate, so the phantom is small
(16x48x48, the whole image is one nnU-Net patch), pre-training uses 16^3 crops and one volume per
step, and the fine-tuning budgets are the ``nnUNetTrainerVoCo[Scratch]_demo[quick]`` trainers'
(:mod:`nnunet_voco.trainers.demo_trainers`). Measured on an otherwise idle 2-CPU machine: default
15 min 20 s (each fine-tuning ~390 s, pre-training 65 s, plan 27 s), ``--quick`` 2 min 43 s, most of
it the start-up of the ten commands. A second call with everything reused takes a few seconds.
Each preset has its own dataset ids and trainers, so ``--quick`` and the default run share one work
folder without touching each other's results.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections.abc import Callable

from nnunet_voco.phantom import write_nnunet_raw_dataset

CONFIGURATION = "3d_fullres"
PLANS = "nnUNetPlans"
FOLD = "0"
SYNTHETIC_NOTE = ("SYNTHETIC DATA: procedurally generated CT-like phantom (nnunet_voco.phantom), not patient "
                  "data. The numbers show that the pipeline runs, not how well VoCo works on real CT.")


@dataclasses.dataclass(frozen=True)
class DemoPreset:
    """Sizes of one demo run (phantom, pool, pre-training) and the trainers that set its budget.

    Attributes:
        name: Preset name; also the sub-folder of the work folder holding its predictions and report.
        dataset_id: nnU-Net id of the labelled phantom dataset.
        pool_id: nnU-Net id of the unlabelled pool made from it.
        dataset_name: Name part of ``Dataset{id}_{name}``.
        shape: Phantom size in voxels, (z, y, x).
        labelled_seeds: Seeds of the labelled (training) cases.
        test_seeds: Seeds of the held-out cases (``imagesTs``).
        unlabelled_seeds: Seeds of the unlabelled pool images.
        pretrain_steps: ``voco_pretrain --num_steps``.
        crop_size: ``voco_pretrain --crop_size`` in nnU-Net axis order (z, y, x here).
        grid: ``voco_pretrain --grid``; ``grid * crop_size`` equals the phantom shape.
        trainer_suffix: Suffix of the trainers in :mod:`nnunet_voco.trainers.demo_trainers`.
    """

    name: str
    dataset_id: int
    pool_id: int
    dataset_name: str
    shape: tuple[int, int, int]
    labelled_seeds: tuple[int, ...]
    test_seeds: tuple[int, ...]
    unlabelled_seeds: tuple[int, ...]
    pretrain_steps: int
    crop_size: tuple[int, int, int]
    grid: tuple[int, int, int]
    trainer_suffix: str


# nnU-Net plans a 4-stage PlainConvUNet for 16x48x48 phantoms (total strides 4, 8, 8), so crops must be
# multiples of (4, 8, 8). Grid 1x3x3 over the in-plane axes, 1 on the coarse axis (the TPAMI recipe).
PRESETS = {
    "default": DemoPreset("default", 801, 802, "VoCoDemoPhantom", (16, 48, 48), tuple(range(6)), (1000, 1001, 1002),
                          tuple(range(100, 124)), 120, (16, 16, 16), (1, 3, 3), "_demo"),
    "quick": DemoPreset("quick", 811, 812, "VoCoDemoQuick", (16, 48, 48), (0, 1, 2), (1000,),
                        tuple(range(100, 104)), 4, (16, 16, 16), (1, 3, 3), "_demoquick"),
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
        """nnU-Net trainer name of ``arm`` ("voco" or "scratch")."""
        return ("nnUNetTrainerVoCo" if arm == "voco" else "nnUNetTrainerVoCoScratch") + self.preset.trainer_suffix

    def fold_folder(self, arm: str) -> str:
        """nnU-Net's output folder of the fine-tuning of ``arm``."""
        return os.path.join(self.results, self.dataset, f"{self.trainer(arm)}__{PLANS}__{CONFIGURATION}",
                            f"fold_{FOLD}")

    def predictions(self, arm: str) -> str:
        """Folder of ``arm``'s segmentations of the held-out cases (and its ``summary.json``)."""
        return os.path.join(self.run, f"predictions_{arm}")

    def test_ids(self) -> list[str]:
        """Case identifiers of the held-out images, as the phantom writer names them."""
        n = len(self.preset.labelled_seeds)
        return [f"{self.preset.dataset_name}_{i:04d}" for i in range(n, n + len(self.preset.test_seeds))]

    def environment(self) -> dict:
        """Environment of every subprocess: nnU-Net's folders plus the CPU-friendly settings."""
        env = dict(os.environ, nnUNet_raw=self.raw, nnUNet_preprocessed=self.preprocessed,
                   nnUNet_results=self.results, nnUNet_compile="0", PYTHONUNBUFFERED="1")
        env.setdefault("nnUNet_def_n_proc", "1")
        env.setdefault("nnUNet_n_proc_DA", "1")  # 0 would break nnUNetv2_plan_and_preprocess
        env.pop("nnUNet_voco_weights", None)  # the VoCo trainer must find the demo's own weights
        return env


def _count_cases(folder: str) -> int:
    return len([f for f in glob.glob(os.path.join(folder, "*.b2nd")) if not f.endswith("_seg.b2nd")])


def _seeds(seeds: tuple[int, ...]) -> str:
    """Python source for a seed list, short for a contiguous run."""
    if len(seeds) > 3 and list(seeds) == list(range(seeds[0], seeds[-1] + 1)):
        return f"list(range({seeds[0]}, {seeds[-1] + 1}))"
    return repr(list(seeds))


def _phantom_call(folders: DemoFolders) -> str:
    """The ``write_nnunet_raw_dataset`` call of the data stage, as Python source (double quotes, for a shell)."""
    p = folders.preset
    return (f"from nnunet_voco.phantom import write_nnunet_raw_dataset; write_nnunet_raw_dataset("
            f"{json.dumps(folders.raw)}, {p.dataset_id}, {json.dumps(p.dataset_name)}, labelled_seeds="
            f"{_seeds(p.labelled_seeds)}, unlabelled_seeds={_seeds(p.unlabelled_seeds)}, test_seeds="
            f"{_seeds(p.test_seeds)}, shape={p.shape})")


def _write_phantom(folders: DemoFolders) -> None:
    p = folders.preset
    write_nnunet_raw_dataset(folders.raw, p.dataset_id, p.dataset_name, list(p.labelled_seeds),
                             list(p.unlabelled_seeds), list(p.test_seeds), shape=p.shape)


def _phantom_is_current(folders: DemoFolders) -> bool:
    """True when the raw dataset was written for this preset's seeds and shape and no file is missing."""
    path = os.path.join(folders.raw_dataset, "dataset.json")  # written last by the phantom writer
    if not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as f:
        phantom = json.load(f).get("phantom", {})
    p = folders.preset
    expected = {"labelled_seeds": list(p.labelled_seeds), "test_seeds": list(p.test_seeds),
                "unlabelled_seeds": list(p.unlabelled_seeds), "shape_zyx": list(p.shape)}
    counts = {"imagesTr": len(p.labelled_seeds), "labelsTr": len(p.labelled_seeds), "imagesTs": len(p.test_seeds),
              "labelsTs": len(p.test_seeds), "imagesUnlabelled": len(p.unlabelled_seeds)}
    files = {sub: glob.glob(os.path.join(folders.raw_dataset, sub, "*.nii.gz")) for sub in counts}
    return all(phantom.get(k) == v for k, v in expected.items()) and all(len(files[k]) == n for k, n in counts.items())


def _is_planned(folders: DemoFolders) -> bool:
    base = os.path.join(folders.preprocessed, folders.dataset)
    return (os.path.isfile(os.path.join(base, f"{PLANS}.json"))
            and _count_cases(os.path.join(base, f"{PLANS}_{CONFIGURATION}")) == len(folders.preset.labelled_seeds))


def write_splits(folders: DemoFolders) -> str:
    """Writes ``splits_final.json``: fold 0 trains on every labelled case, validates on the first one.

    Args:
        folders: The preset's folders.

    Returns:
        A line saying what was written.
    """
    n = len(folders.preset.labelled_seeds)
    train = [f"{folders.preset.dataset_name}_{i:04d}" for i in range(n)]
    path = os.path.join(folders.preprocessed, folders.dataset, "splits_final.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump([{"train": train, "val": train[:1]}], f, indent=2)
    return (f"wrote {path}: fold {FOLD} trains on all {n} labelled cases; nnU-Net's validation case {train[0]} is "
            "one of them (so nnU-Net warns 'Some validation cases are also in the training set': intended). The "
            f"{len(folders.preset.test_seeds)} held-out cases are in imagesTs/labelsTs")


def build_stages(folders: DemoFolders, device: str) -> list[Stage]:
    """The demo's stages in execution order.

    Args:
        folders: Paths of the preset being run.
        device: ``cpu`` or ``cuda``, passed to the commands that train or predict.

    Returns:
        The stages; each one's ``needs`` refers to earlier stages only.
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
        Stage("pretrain", "VoCo pre-training on the unlabelled pool + the labelled images",
              lambda fresh: _pretrain_command(folders, device, fresh),
              lambda: os.path.isfile(os.path.join(folders.pretrain_folder, "voco_encoder.pth")), ("pool",)),
    ]
    for arm, needs in (("voco", ("plan", "pretrain")), ("scratch", ("plan",))):
        stages += _arm_stages(folders, arm, needs, device)
    return stages


def _is_pooled(folders: DemoFolders) -> bool:
    pool = os.path.join(folders.preprocessed, folders.pool)
    return (os.path.isfile(os.path.join(pool, "voco_pool.json"))
            and _count_cases(os.path.join(pool, f"{PLANS}_{CONFIGURATION}")) == len(folders.preset.unlabelled_seeds))


def _pretrain_command(folders: DemoFolders, device: str, fresh: bool) -> list[str]:
    """``voco_pretrain -d POOL TARGET`` with the preset's small crops; one volume per step (CPU)."""
    p = folders.preset
    return (["voco_pretrain", "-d", str(p.pool_id), str(p.dataset_id), "-device", device,
             "--num_steps", str(p.pretrain_steps), "--crop_size", *map(str, p.crop_size), "--grid", *map(str, p.grid),
             "--batch_size", "1", "--num_workers", "1", "--log_every", str(max(1, p.pretrain_steps // 40)),
             "--save_every", str(max(1, p.pretrain_steps // 4))]
            + _resume_flag(folders.pretrain_folder, fresh, "--overwrite"))


def _resume_flag(folder: str, fresh: bool, restart: str | None) -> list[str]:
    """``--c`` to continue an interrupted run; when an input changed (``fresh``), ``restart`` instead."""
    has_run = os.path.isfile(os.path.join(folder, "checkpoint_latest.pth"))
    if fresh:
        return [restart] if restart and has_run else []
    return ["--c"] if has_run else []


def _arm_stages(folders: DemoFolders, arm: str, needs: tuple[str, ...], device: str) -> list[Stage]:
    ds, trainer, pred = str(folders.preset.dataset_id), folders.trainer(arm), folders.predictions(arm)
    fold, summary = folders.fold_folder(arm), os.path.join(folders.predictions(arm), "summary.json")
    label = "VoCo-pretrained" if arm == "voco" else "from scratch (matched baseline)"
    return [
        Stage(f"train_{arm}", f"fine-tune {label} on the labelled cases",
              lambda fresh: ["nnUNetv2_train", ds, CONFIGURATION, FOLD, "-tr", trainer, "-device", device]
              + _resume_flag(fold, fresh, None),
              lambda: os.path.isfile(os.path.join(fold, "checkpoint_final.pth")), needs),
        Stage(f"predict_{arm}", f"segment the held-out cases ({label})",
              lambda fresh: ["nnUNetv2_predict", "-i", os.path.join(folders.raw_dataset, "imagesTs"), "-o", pred,
                             "-d", ds, "-c", CONFIGURATION, "-f", FOLD, "-tr", trainer, "-device", device,
                             "-npp", "0", "-nps", "0"],
              lambda: all(os.path.isfile(os.path.join(pred, f"{c}.nii.gz")) for c in folders.test_ids()),
              (f"train_{arm}",)),
        Stage(f"evaluate_{arm}", f"Dice on the held-out cases ({label})",
              lambda fresh: ["nnUNetv2_evaluate_folder", os.path.join(folders.raw_dataset, "labelsTs"), pred,
                             "-djfile", os.path.join(pred, "dataset.json"), "-pfile", os.path.join(pred, "plans.json"),
                             "-o", summary, "-np", "1"],
              lambda: os.path.isfile(summary), (f"predict_{arm}",)),
    ]


