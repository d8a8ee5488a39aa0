"""nnU-Net finds the VoCo trainers without set-up: start-up hook, shim folder, picklable classes."""
import os
import pickle
import subprocess
import sys
import zipfile

import pytest

from nnunet_voco import discovery

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env_in_fresh_interpreter(extra: dict) -> str:
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    env.update(extra)
    code = "import os; print(os.environ.get('nnUNet_extTrainer', ''))"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip()


def test_hook_sets_the_variable_and_keeps_user_values():
    discovery.ensure_startup_hook(quiet=True)
    assert _env_in_fresh_interpreter({}).split(os.pathsep) == [discovery.shim_folder()]
    assert _env_in_fresh_interpreter({"nnUNet_extTrainer": "/my/trainers"}).split(os.pathsep) == [
        "/my/trainers", discovery.shim_folder()]


def test_shim_only_re_exports_real_classes_which_stay_picklable(monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunet_voco.trainers import nnUNetTrainerVoCo

    monkeypatch.setenv("nnUNet_extTrainer", discovery.shim_folder())
    cls = recursive_find_trainer_class_by_name("nnUNetTrainerVoCo")
    assert cls is nnUNetTrainerVoCo and cls.__module__ == "nnunet_voco.trainers.voco_trainers"
    assert pickle.loads(pickle.dumps(cls)) is cls
    assert sorted(f for f in os.listdir(discovery.shim_folder()) if f.endswith(".py")) == ["nnunet_voco_trainers.py"]


@pytest.mark.slow
def test_regular_install_ships_the_hook(tmp_path):
    """A wheel (what `pip install .` installs) carries the .pth hook, its module and the shim."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), REPO], check=True, capture_output=True)
    wheel = next(p for p in os.listdir(tmp_path) if p.endswith(".whl"))
    names = zipfile.ZipFile(tmp_path / wheel).namelist()
    assert any(n.endswith("/nnunet_voco.pth") for n in names), names
    assert "_nnunet_voco_autoload.py" in names
    assert "nnunet_voco/nnunet_trainers/nnunet_voco_trainers.py" in names
    assert "nnunet_voco/pretrain/cli.py" in names and "nnunet_voco/trainers/voco_trainers.py" in names
    assert not any(n.startswith(("pretrain/", "trainers/")) for n in names)
