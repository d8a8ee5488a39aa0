"""The sizes of a ``voco_demo`` run: the default run and ``--quick``, and the pre-training settings.

``RUN_SIZES`` holds the two runs: the phantom (shape, seeds of the training, held-out and pool
cases), the pre-training (steps, crops, held-out monitor), the seeds (folds) trained per arm and the
trainers that set the training budget (:mod:`nnunet_voco.trainers.demo_trainers`). Each run size has
its own dataset ids and trainers, so ``--quick`` and the default run share one work folder without
touching each other's results.

Tuning (what chose the budgets and settings below) used other phantom seeds and other folds than the
report: labelled seeds 500-505, held-out 2000-2005, pool 300-323 (dataset 851) and folds 3-5. The
report uses the seeds of ``RUN_SIZES`` and folds 0-2.

Budget: 2 CPU cores are the target. On CPU, 3-D convolutions dominate, so the phantom is small
(16x48x48, the whole image is one nnU-Net patch) and pre-training uses 16^3 crops. Measured from a fresh
clone on 2 otherwise idle cores (load 1.6-2.7 from the demo itself): the default run took 700 s (plan 14 s,
pool 3 s, 250 pre-training steps 45 s, each of the 6 trainings of 8 x 25 iterations 94-111 s), 13 min with
the install. ``--quick``'s stages took 99 s in a CI rehearsal at load 5. The tuning runs that chose the
budgets are in README ("What the default run shows").
"""
from __future__ import annotations

import dataclasses

# Pre-training settings of the default demo (single place to change them).
PRETRAIN_STEPS = 250
PRETRAIN_LR = 1e-4
PRETRAIN_VAL_EVERY = 125
FULL_PRETRAIN_STEPS = 3000
GPU_PRETRAIN_STEPS = 10_000
GPU_PRETRAIN_BATCH_SIZE = 4
# Per-crop flips and rot90 off: on the tuning pool (dataset 851 of /tmp/exp, seed 100, 300 steps, batch 1,
# lr 1e-4) held-out position accuracy went 0.302 -> 0.354 with the official augmentation and 0.302 -> 0.448
# without it (lr 3e-4: 0.323; without the inter-volume term: 0.333). The intensity shift stays (v2: p 0.5).
PRETRAIN_AUGMENTATION = ("--flip_prob", "0", "--rot90_prob", "0")


@dataclasses.dataclass(frozen=True)
class RunSize:
    """Sizes of one demo run (phantom, pool, pre-training, seeds) and the trainers that set its budget.

    Attributes:
        name: Key in ``RUN_SIZES`` ("default" or "quick"); also the sub-folder of the work folder
            holding its logs and report.
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
        arms: Keys of :data:`nnunet_voco.demo.arms.ARMS` trained, each with every seed.
        pretrain_batch_size: ``voco_pretrain --batch_size`` (volumes per step).
        pretrain_workers: ``voco_pretrain --num_workers``.
        jobs: Stages run side by side (training stages of different arms and seeds).
        processes: ``-np`` of the preprocessing commands.
        description: One line on what the run size is for (``voco_demo --help``).
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
    arms: tuple[str, ...] = ("frozen_voco", "frozen_scratch", "voco", "scratch")
    pretrain_batch_size: int = 1
    pretrain_workers: int = 1
    jobs: int = 1
    processes: int = 1
    description: str = ""

    @property
    def labelled_seeds(self) -> tuple[int, ...]:
        """Phantom seeds of every labelled case: the training cases, then the held-out cases."""
        return self.train_seeds + self.heldout_seeds


# nnU-Net plans a 4-stage PlainConvUNet for 16x48x48 phantoms (total strides 4, 8, 8), so crops must be
# multiples of (4, 8, 8). Grid 1x3x3 over the in-plane axes, 1 on the coarse axis (the TPAMI recipe).
# The default, full and gpu runs share the labelled phantom cases (seeds 0-5, held out 1000-1007), so their
# Dice tables are comparable; each has its own dataset ids and trainers.
_TRAIN, _HELDOUT, _CROP, _GRID = tuple(range(6)), tuple(range(1000, 1008)), (16, 16, 16), (1, 3, 3)
FINE_TUNING_ARMS = ("voco", "scratch")
ALL_ARMS = ("frozen_voco", "frozen_scratch", "voco", "scratch")
RUN_SIZES = {
    "quick": RunSize("quick", 831, 832, "VoCoDemoQuick", (16, 48, 48), (0, 1, 2), (1000,), tuple(range(100, 104)),
                     4, PRETRAIN_LR, 1, 2, 2, _CROP, _GRID, (0,), "_demoquick", ALL_ARMS,
                     description="smoke test of every stage and trainer (CI); its Dice says nothing"),
    "default": RunSize("default", 821, 822, "VoCoDemoPhantom", (16, 48, 48), _TRAIN, _HELDOUT,
                       tuple(range(100, 124)), PRETRAIN_STEPS, PRETRAIN_LR, 4, PRETRAIN_VAL_EVERY, 24, _CROP, _GRID,
                       (0, 1, 2), "_demo", FINE_TUNING_ARMS,
                       description="fine-tuning VoCo vs scratch, 3 seeds, 12 minutes on 2 idle CPU cores (measured)"),
    "full": RunSize("full", 841, 842, "VoCoDemoFull", (16, 48, 48), _TRAIN, _HELDOUT, tuple(range(100, 148)),
                    FULL_PRETRAIN_STEPS, PRETRAIN_LR, 4, 250, 48, _CROP, _GRID, (0, 1, 2), "_demofull", ALL_ARMS,
                    description="both comparisons at 40 x 25 iterations (scratch learned every organ on a tuning case); hours on CPU"),
    "gpu": RunSize("gpu", 861, 862, "VoCoDemoGPU", (16, 48, 48), _TRAIN, _HELDOUT, tuple(range(3000, 3256)),
                   GPU_PRETRAIN_STEPS, PRETRAIN_LR, 8, 1000, 48, _CROP, _GRID, (0, 1, 2), "_demogpu", ALL_ARMS,
                   pretrain_batch_size=GPU_PRETRAIN_BATCH_SIZE, pretrain_workers=8, jobs=6, processes=8,
                   description="both comparisons with 10k pre-training steps, sized for one GPU (-device cuda)"),
}
