"""The arms of ``voco_demo`` (one trainer each) and the two comparisons its report makes.

Each arm is trained with the same budget (the trainers of :mod:`nnunet_voco.trainers.demo_trainers`,
named ``<trainer><suffix>`` with the run size's suffix); the pairs in ``COMPARISONS`` differ only in
whether the encoder starts from the VoCo weights.
"""
from __future__ import annotations

# Arms: key -> (trainer class without the budget suffix, label). Pairs compared in the report.
ARMS = {"frozen_voco": ("nnUNetTrainerVoCoFrozen", "frozen VoCo encoder"),
        "frozen_scratch": ("nnUNetTrainerVoCoFrozenScratch", "frozen random encoder"),
        "voco": ("nnUNetTrainerVoCo", "VoCo fine-tuned"),
        "scratch": ("nnUNetTrainerVoCoScratch", "from scratch")}
COMPARISONS = (("frozen-encoder probe", "frozen_voco", "frozen_scratch"),
               ("full fine-tuning", "voco", "scratch"))
# Arms whose trainers load the pre-trained encoder (their training stages need the pre-training).
PRETRAINED_ARMS = ("voco", "frozen_voco")
