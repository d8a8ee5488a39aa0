"""nnU-Net's GPU-memory budget for a dataset, as its experiment planner defines it (for ``voco_plan_like``).

nnU-Net sizes a 3d_fullres patch by building the network and comparing
``compute_conv_feature_map_size(patch) / reference_batch * 2`` against a reference value scaled by the
planner's GPU-memory target (``ExperimentPlanner.get_plans_for_configuration``, nnunetv2 2.8.1); the batch
size is then ``round(reference / estimate * reference_batch)``, capped at the share of the dataset one
step may cover and raised to the minimum batch. The numbers live on the planner instance (the ResEnc
M/L/XL planners change them), so the planner that made the base plans is instantiated here and its
values are read; nothing is re-declared.
"""
from __future__ import annotations

import dataclasses
import os

from nnunet_voco.nnunet import UserInputError


@dataclasses.dataclass(frozen=True)
class MemoryBudget:
    """A planner's memory target and batch rules (3-D)."""

    planner: str
    vram_gb: float
    reference: float  # feature-map budget for ``reference_batch`` patches at ``vram_gb``
    reference_batch: int
    min_batch: int
    max_dataset_covered: float
    num_training: int

    def fits(self, estimate: float) -> bool:
        """nnU-Net's test (it enforces a batch of at least two)."""
        return estimate / self.reference_batch * 2 <= self.reference

    def batch_size(self, estimate: float, patch_voxels: float, median_voxels: float) -> int:
        """nnU-Net's batch rule for a patch whose feature maps cost ``estimate``."""
        batch = round(self.reference / estimate * self.reference_batch)
        cap = round(median_voxels * self.num_training * self.max_dataset_covered / patch_voxels)
        return int(max(min(batch, cap), self.min_batch))


def memory_budget(dataset_name: str, planner_name: str) -> MemoryBudget:
    """Instantiate nnU-Net's planner ``planner_name`` for ``dataset_name`` and read its budget.

    Raises:
        UserInputError: unknown planner, or the dataset lacks what nnU-Net's planner needs (raw folder,
            fingerprint); the message names the command.
    """
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    cls = recursive_find_python_class(os.path.join(nnunetv2.__path__[0], "experiment_planning"), planner_name,
                                      "nnunetv2.experiment_planning")
    if cls is None:
        raise UserInputError(f"experiment planner {planner_name!r} not found in nnunetv2; pass -pl with one of "
                             f"ExperimentPlanner, nnUNetPlannerResEncM, nnUNetPlannerResEncL, nnUNetPlannerResEncXL")
    try:
        planner = cls(dataset_name)
    except (OSError, RuntimeError, KeyError, StopIteration) as e:
        raise UserInputError(f"nnU-Net's {planner_name} cannot plan {dataset_name} ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:160] if str(e) else ''}); it needs the raw dataset and its "
                             f"fingerprint: run `nnUNetv2_extract_fingerprint -d {int(dataset_name[7:10])}`") from None
    return MemoryBudget(
        planner=planner_name, vram_gb=float(planner.UNet_vram_target_GB),
        reference=float(planner.UNet_reference_val_3d) * planner.UNet_vram_target_GB / planner.UNet_reference_val_corresp_GB,
        reference_batch=int(planner.UNet_reference_val_corresp_bs_3d), min_batch=int(planner.UNet_min_batch_size),
        max_dataset_covered=float(planner.max_dataset_covered), num_training=int(planner.dataset_json["numTraining"]))
