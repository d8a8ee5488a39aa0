"""nnUNetTrainer subclasses of nnunet-voco (installed as ``nnunet_voco.trainers``).

    * :mod:`~nnunet_voco.trainers.voco_trainers`: ``nnUNetTrainerVoCo`` and ``nnUNetTrainerVoCoScratch``;
    * :mod:`~nnunet_voco.trainers.length_trainers`: their ``_100epochs`` / ``_250epochs`` / ``_500epochs``;
    * :mod:`~nnunet_voco.trainers.frozen_trainers`: the frozen-encoder probes;
    * :mod:`~nnunet_voco.trainers.smoke_trainers` and :mod:`~nnunet_voco.trainers.demo_trainers`:
      CPU test and ``voco_demo`` budgets;
    * :mod:`~nnunet_voco.trainers.swin_trainers` (+ ``swin_smoke_trainers``): SwinUNETR-v2, with MONAI.

Every variant sets class attributes only (its budget: :mod:`nnunet_voco.trainers.training_budget`).
nnU-Net finds them through the shim folder ``nnunet_shim`` (next to this file) listed in
``nnUNet_extTrainer`` (set automatically at start-up, see :mod:`nnunet_voco.trainers.discovery`).
"""
from nnunet_voco.trainers.voco_trainers import *  # noqa: F401,F403
from nnunet_voco.trainers.voco_trainers import __all__ as _cnn

from nnunet_voco.trainers.length_trainers import *  # noqa: F401,F403
from nnunet_voco.trainers.length_trainers import __all__ as _length

from nnunet_voco.trainers.frozen_trainers import *  # noqa: F401,F403
from nnunet_voco.trainers.frozen_trainers import __all__ as _frozen

from nnunet_voco.trainers.smoke_trainers import *  # noqa: F401,F403
from nnunet_voco.trainers.smoke_trainers import __all__ as _smoke

from nnunet_voco.trainers.demo_trainers import *  # noqa: F401,F403
from nnunet_voco.trainers.demo_trainers import __all__ as _demo

__all__ = list(_cnn) + list(_length) + list(_frozen) + list(_smoke) + list(_demo)
try:  # the Swin trainers need MONAI
    from nnunet_voco.trainers.swin_trainers import *  # noqa: F401,F403
    from nnunet_voco.trainers.swin_trainers import __all__ as _swin
    from nnunet_voco.trainers.swin_smoke_trainers import *  # noqa: F401,F403
    from nnunet_voco.trainers.swin_smoke_trainers import __all__ as _swin_smoke

    __all__ += list(_swin) + list(_swin_smoke)
except ImportError as _e:  # pragma: no cover - only without MONAI or while swin_trainers is absent
    if "swin_trainers" not in str(_e) and "swin_smoke_trainers" not in str(_e) and "monai" not in str(_e):
        raise
