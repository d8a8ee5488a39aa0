"""Unlabelled pool -> voco_pretrain on pool + target -> nnUNetTrainerVoCo finds the pooled weights by itself."""
import os
import shutil

import pytest

from conftest import PRETRAIN_FAST, TOY_ID, TOY_NAME, run

pytestmark = pytest.mark.slow
POOL_ID = 991


def test_pool_pretrain_and_finetune_without_path_juggling(planned_toy, tmp_path):
    env = dict(planned_toy, nnUNet_results=str(tmp_path / "results"))  # own results: other tests keep theirs
    os.makedirs(env["nnUNet_results"])
    images = tmp_path / "unlabelled"
    images.mkdir()
    src = os.path.join(env["nnUNet_raw"], TOY_NAME, "imagesTr")
    for i, name in enumerate(sorted(os.listdir(src))[:4]):
        shutil.copy(os.path.join(src, name), images / f"scan{i:03d}.nii.gz")  # no labels, no _0000 suffix
    out = run(["voco_preprocess_unlabeled", "-i", str(images), "-d", str(TOY_ID), "-o", str(POOL_ID), "-np", "1"], env)
    assert f"voco_pretrain -d {POOL_ID} {TOY_ID}" in out.stdout + out.stderr
    run(["voco_pretrain", "-d", str(POOL_ID), str(TOY_ID), "--num_steps", "2", "--save_every", "2"] + PRETRAIN_FAST,
        env)
    run(["nnUNetv2_train", str(TOY_ID), "3d_fullres", "1", "-tr", "nnUNetTrainerVoCo_smoke", "-device", "cpu"], env)
    fold = os.path.join(env["nnUNet_results"], TOY_NAME, "nnUNetTrainerVoCo_smoke__nnUNetPlans__3d_fullres", "fold_1")
    log = open(os.path.join(fold, next(f for f in os.listdir(fold) if f.startswith("training_log")))).read()
    line = next(l for l in log.splitlines() if "VoCo: loaded" in l)
    assert f"Dataset{POOL_ID}_" in line and "VoCo__nnUNetPlans__3d_fullres" in line, line
    assert f"pretrained on Dataset{POOL_ID}_" in line and TOY_NAME in line.split("pretrained on")[1]
    n, m = line.split("VoCo: loaded ")[1].split(" ")[0].split("/")
    assert n == m
