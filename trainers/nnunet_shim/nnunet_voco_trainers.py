"""Shim scanned by nnU-Net through ``nnUNet_extTrainer``.

nnU-Net imports the modules of that folder under bare names and removes them from ``sys.modules``
afterwards; re-exporting keeps every class defined in ``nnunet_voco.trainers`` (importable and
picklable under its real module name).
"""
from nnunet_voco.trainers import *  # noqa: F401,F403
from nnunet_voco.trainers.frozen_trainers import *  # noqa: F401,F403
