"""Start-up hook of nnunet-voco (imported by ``nnunet_voco.pth`` at every interpreter start).

Appends the shim folder ``nnunet_voco/trainers/nnunet_shim`` to ``nnUNet_extTrainer`` so that the stock
``nnUNetv2_train``/``nnUNetv2_predict`` find ``nnUNetTrainerVoCo`` without any set-up. It keeps a
user's own value of the variable, imports nothing heavy (``find_spec`` locates the package without
executing it) and never raises.
"""
import importlib.util
import os


def _register() -> None:
    spec = importlib.util.find_spec("nnunet_voco")
    if spec is None or not spec.submodule_search_locations:
        return
    shim = os.path.join(list(spec.submodule_search_locations)[0], "trainers", "nnunet_shim")
    if not os.path.isdir(shim):
        return
    parts = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if shim not in parts:
        os.environ["nnUNet_extTrainer"] = os.pathsep.join(parts + [shim])


try:
    _register()
except Exception:  # a start-up hook must never break the interpreter
    pass
