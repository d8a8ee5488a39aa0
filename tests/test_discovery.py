"""nnU-Net finds the VoCo trainers without set-up: start-up hook, shim folder, picklable classes."""
import os
import pickle
import subprocess
import sys
import zipfile

import pytest

from nnunet_voco.trainers import discovery

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env_in_fresh_interpreter(extra: dict) -> str:
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    env.update(extra)
    code = "import os; print(os.environ.get('nnUNet_extTrainer', ''))"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, encoding="utf-8", errors="replace").stdout.strip()


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
def test_regular_install_ships_a_working_hook(tmp_path):
    """`pip install` of the wheel (not editable) into a fresh venv installs the .pth hook, its module and the
    shim; a new interpreter of that venv then has nnUNet_extTrainer pointing at the shim."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), REPO], check=True, capture_output=True)  # builds only: the test venv stays intact
    wheel = str(next(tmp_path.glob("*.whl")))
    names = zipfile.ZipFile(wheel).namelist()
    assert not any(n.startswith(("pretrain/", "trainers/", "commands/")) for n in names)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    subprocess.run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "-q", wheel],
                   check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k not in ("nnUNet_extTrainer", "PYTHONPATH", "VIRTUAL_ENV")}
    code = "import os, sysconfig; print(os.environ.get('nnUNet_extTrainer', '')); print(sysconfig.get_paths()['purelib'])"
    value, site_dir = subprocess.run([py, "-c", code], env=env, capture_output=True, encoding="utf-8", errors="replace",
                                     check=True).stdout.split()
    shim = os.path.join(site_dir, "nnunet_voco", "trainers", "nnunet_shim")
    assert value == shim and os.path.isfile(os.path.join(shim, "nnunet_voco_trainers.py"))
    assert {"nnunet_voco.pth", "_nnunet_voco_autoload.py"} <= set(os.listdir(site_dir))
