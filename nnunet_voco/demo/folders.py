"""Where a ``voco_demo`` run keeps its files: nnU-Net's three folders, dataset names and run folders.

One work folder holds ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` (shared by the
run sizes, whose datasets have different ids) and one sub-folder per run size (``default``,
``quick``) with its logs, state and report. The pre-training's run folder is named by
:mod:`nnunet_voco.artifacts`, as for any ``voco_pretrain``.
"""
from __future__ import annotations

import os

from nnunet_voco import artifacts
from nnunet_voco.demo.arms import ARMS
from nnunet_voco.demo.run_sizes import RunSize
from nnunet_voco.pool.target import pool_dataset_name

CONFIGURATION = "3d_fullres"
PLANS = "nnUNetPlans"


class DemoFolders:
    """Paths of one run size inside the work folder (nnU-Net's three folders are shared by run sizes)."""

    def __init__(self, work: str, run_size: RunSize):
        self.work, self.run_size = os.path.abspath(work), run_size
        self.raw = os.path.join(self.work, "nnUNet_raw")
        self.preprocessed = os.path.join(self.work, "nnUNet_preprocessed")
        self.results = os.path.join(self.work, "nnUNet_results")
        self.run = os.path.join(self.work, run_size.name)
        self.dataset = f"Dataset{run_size.dataset_id:03d}_{run_size.dataset_name}"
        self.pool = pool_dataset_name(run_size.pool_id, self.dataset)
        self.raw_dataset = os.path.join(self.raw, self.dataset)
        self.pretrain_folder = artifacts.run_folder(self.pool, PLANS, CONFIGURATION, results=self.results)

    def trainer(self, arm: str) -> str:
        """nnU-Net trainer name of ``arm`` (a key of :data:`nnunet_voco.demo.arms.ARMS`)."""
        return ARMS[arm][0] + self.run_size.trainer_suffix

    def fold_folder(self, arm: str, seed: int) -> str:
        """nnU-Net's output folder of ``arm``'s training with fold (= seed) ``seed``."""
        return os.path.join(self.results, self.dataset, f"{self.trainer(arm)}__{PLANS}__{CONFIGURATION}",
                            f"fold_{seed}")

    def summary(self, arm: str, seed: int) -> str:
        """nnU-Net's final-validation ``summary.json`` (Dice on the held-out cases) of one run."""
        return os.path.join(self.fold_folder(arm, seed), "validation", "summary.json")

    def train_ids(self) -> list[str]:
        """Case identifiers of the labelled training cases, as the phantom writer names them."""
        return [f"{self.run_size.dataset_name}_{i:04d}" for i in range(len(self.run_size.train_seeds))]

    def heldout_ids(self) -> list[str]:
        """Case identifiers of the held-out cases (numbered after the training cases)."""
        n = len(self.run_size.train_seeds)
        return [f"{self.run_size.dataset_name}_{i:04d}" for i in range(n, n + len(self.run_size.heldout_seeds))]

    def environment(self) -> dict:
        """Environment of every subprocess: nnU-Net's folders plus the CPU-friendly settings."""
        env = dict(os.environ, nnUNet_raw=self.raw, nnUNet_preprocessed=self.preprocessed,
                   nnUNet_results=self.results, nnUNet_compile="0", PYTHONUNBUFFERED="1")
        env.setdefault("nnUNet_def_n_proc", "1")
        env.setdefault("nnUNet_n_proc_DA", "1")  # 0 would break nnUNetv2_plan_and_preprocess
        env.pop("nnUNet_voco_weights", None)  # the VoCo trainers must find the demo's own weights
        return env


def disk_usage(folder: str) -> int:
    """Bytes of the regular files under ``folder`` (0 when it does not exist)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                total += os.path.getsize(path)
    return total
