"""Shared fixtures: temporary nnU-Net folders with a tiny planned dataset (built once per session)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

TOY_ID = 990
TOY_NAME = f"Dataset{TOY_ID}_VoCoToy"
# A three-stage ResEnc (strides 1, 2, 2 in-plane, 2 through-plane: total 2 x 4 x 4) with patch 8 x 16 x 16
TINY_STRIDES = ((1, 1, 1), (1, 2, 2), (2, 2, 2))


def write_toy_raw(raw: str, n_cases: int = 5, shape=(24, 56, 56), spacing=(1.0, 1.0, 2.5), seed: int = 0) -> str:
    """Tiny CT-like raw dataset: body ellipse, a bright 'organ' labelled 1, plus nibabel's real anatomical.nii.

    ``shape`` is (z, y, x) (SimpleITK array order), ``spacing`` is (x, y, z).
    """
    import SimpleITK as sitk

    folder = os.path.join(raw, TOY_NAME)
    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    for i in range(n_cases):
        body = ((y - shape[1] / 2) / (shape[1] * 0.42)) ** 2 + ((x - shape[2] / 2) / (shape[2] * 0.45)) ** 2 < 1
        c = np.array(shape) / 2 + rng.integers(-3, 4, 3)
        organ = (((z - c[0]) / 6) ** 2 + ((y - c[1]) / 8) ** 2 + ((x - c[2] + 8) / 9) ** 2) < 1
        img = np.where(body, 40.0, -1000.0) + organ * 80.0 + rng.normal(0, 20, shape)
        _write(sitk, img.astype(np.float32), os.path.join(folder, "imagesTr", f"toy_{i:03d}_0000.nii.gz"), spacing)
        _write(sitk, organ.astype(np.uint8), os.path.join(folder, "labelsTr", f"toy_{i:03d}.nii.gz"), spacing)
    real = real_anatomical()
    if real is not None:
        arr, sp = real
        label = (arr > np.percentile(arr, 85)).astype(np.uint8)
        # scale the MR intensities into a CT-like range so that one CT normalisation fits all cases
        img = (arr - arr.mean()) / (arr.std() + 1e-6) * 150.0
        _write(sitk, img.astype(np.float32), os.path.join(folder, "imagesTr", f"toy_{n_cases:03d}_0000.nii.gz"), sp)
        _write(sitk, label, os.path.join(folder, "labelsTr", f"toy_{n_cases:03d}.nii.gz"), sp)
        n_cases += 1
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump({"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1}, "numTraining": n_cases,
                   "file_ending": ".nii.gz", "name": "VoCoToy"}, f, indent=2)
    return folder


def real_anatomical():
    """nibabel's bundled real T1 head (33x41x25, 2 mm) as (z, y, x) array and (x, y, z) spacing, or None."""
    try:
        import nibabel
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(nibabel.__file__), "tests", "data", "anatomical.nii")
    if not os.path.isfile(path):
        return None
    img = nibabel.load(path)
    arr = np.asarray(img.dataobj, dtype=np.float32)  # (x, y, z)
    return np.ascontiguousarray(arr.transpose(2, 1, 0)), tuple(float(s) for s in img.header.get_zooms()[:3])


def _write(sitk, arr, path, spacing):
    im = sitk.GetImageFromArray(arr)
    im.SetSpacing(tuple(float(s) for s in spacing))
    sitk.WriteImage(im, path)


def nnunet_env(root: str) -> dict:
    env = dict(os.environ)
    env.update(nnUNet_raw=os.path.join(root, "raw"), nnUNet_preprocessed=os.path.join(root, "preprocessed"),
               nnUNet_results=os.path.join(root, "results"), nnUNet_def_n_proc="1", nnUNet_n_proc_DA="1",
               nnUNet_compile="0", OMP_NUM_THREADS="2")
    env.pop("nnUNet_extTrainer", None)
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(env[k], exist_ok=True)
    return env


def script(name: str) -> str:
    """Path of a console script of the venv this test runs in (falls back to PATH)."""
    exe = os.path.join(os.path.dirname(sys.executable), name)
    return exe if os.path.exists(exe) else name


def run(cmd: list[str], env: dict, timeout: int = 900, check: bool = True) -> subprocess.CompletedProcess:
    """Run a console script of the venv this test runs in."""
    proc = subprocess.run([script(cmd[0])] + cmd[1:], env=env, capture_output=True,
                          encoding="utf-8", errors="replace", timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def planned_toy(tmp_path_factory):
    """A planned and preprocessed toy dataset (default and ResEnc-M plans); returns the env dict."""
    root = str(tmp_path_factory.mktemp("nnunet"))
    env = nnunet_env(root)
    write_toy_raw(env["nnUNet_raw"])
    run(["nnUNetv2_plan_and_preprocess", "-d", str(TOY_ID), "-c", "3d_fullres", "-np", "1", "-npfp", "1",
         "--verify_dataset_integrity"], env)
    run(["nnUNetv2_plan_and_preprocess", "-d", str(TOY_ID), "-c", "3d_fullres", "-np", "1", "-npfp", "1",
         "-pl", "nnUNetPlannerResEncM"], env)
    return env


PRETRAIN_FAST = ["-device", "cpu", "--crop_size", "8", "16", "16", "--batch_size", "2", "--num_workers", "1",
                 "--log_every", "2"]


@pytest.fixture(scope="session")
def pretrained_toy(planned_toy):
    """``voco_pretrain`` (default plans, 4 steps) on the toy dataset; returns (env, output folder)."""
    run(["voco_pretrain", "-d", str(TOY_ID), "--num_steps", "4", "--save_every", "2"] + PRETRAIN_FAST, planned_toy)
    return planned_toy, os.path.join(planned_toy["nnUNet_results"], TOY_NAME, "VoCo__nnUNetPlans__3d_fullres")


def open_tiny_synthetic(tmp_path, monkeypatch, dataset_id: int, n_cases: int, shape=(12, 40, 40), strides=TINY_STRIDES,
                        patch_size=(8, 16, 16), features=None) -> list:
    """A SYNTHETIC preprocessed dataset (hand-written ResEnc plans, nnU-Net's save_case) under ``tmp_path``,
    opened as voco_pretrain opens data; the nnU-Net folder variables point there for the test."""
    from nnunet_voco.nnunet import open_dataset
    from nnunet_voco.nnunet.synthetic_datasets import RESENC_M_PLANS, nnunet_folders, synthetic_plans, \
        write_synthetic_dataset

    for key, value in nnunet_folders(str(tmp_path)).items():
        monkeypatch.setenv(key, value)
    features = features or [4 * 2 ** i for i in range(len(strides))]
    plans = synthetic_plans("Tiny", patch_size, features, strides, (1,) * len(strides))
    write_synthetic_dataset(os.environ["nnUNet_preprocessed"], dataset_id, "Tiny", plans, n_cases, shape)
    return [open_dataset(dataset_id, RESENC_M_PLANS, "3d_fullres")]
