"""nnUNetTrainer subclasses of nnunet-voco (installed as ``nnunet_voco.trainers``).

nnU-Net finds them through the shim folder ``nnunet_shim`` (next to this file) listed in
``nnUNet_extTrainer`` (set automatically at start-up, see :mod:`nnunet_voco.trainers.discovery`).
"""
from nnunet_voco.trainers.voco_trainers import *  # noqa: F401,F403
from nnunet_voco.trainers.voco_trainers import __all__ as _cnn

from nnunet_voco.trainers.frozen_trainers import *  # noqa: F401,F403
from nnunet_voco.trainers.frozen_trainers import __all__ as _frozen

from nnunet_voco.trainers.demo_trainers import *  # noqa: F401,F403
from nnunet_voco.trainers.demo_trainers import __all__ as _demo

__all__ = list(_cnn) + list(_frozen) + list(_demo)
try:  # the Swin trainers need MONAI
    from nnunet_voco.trainers.swin_trainers import *  # noqa: F401,F403
    from nnunet_voco.trainers.swin_trainers import __all__ as _swin

    __all__ += list(_swin)
except ImportError as _e:  # pragma: no cover - only without MONAI or while swin_trainers is absent
    if "swin_trainers" not in str(_e) and "monai" not in str(_e):
        raise
