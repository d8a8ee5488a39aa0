"""Published-weights workflow end to end through the real commands, on synthetic checkpoints of the nnssl layout.

1. Isotropic 2-channel MRI-like target (the 1:1 chain): nnssl folder -> voco_import_weights (--inspect -d) ->
   voco_plan_like -> nnUNetv2_preprocess -> voco_pretrain --init (and --c) -> nnUNetv2_train (smoke, N/N with the
   input channels adapted 1 -> 2) -> nnUNetv2_predict -> voco_export_weights -> import again (tensors equal);
   the nnU-Net checkpoint the training wrote imports as well.
2. Anisotropic CT-like target (the toy dataset, 2.5 x 1 x 1 mm): voco_plan_like --topology dataset -> preprocess ->
   train (stem and stage 0 kernels averaged, the extra stage random) -> predict.

The weights are a small ResidualEncoderUNet in nnssl's generic plan form (the real ResEncL costs 20-30 s per
training iteration on these CPUs; its layout is covered on the meta device in test_weights_import.py). nnU-Net's
own commands run as processes (that is what is verified); ours run in this process through their ``main()``
(each process start costs 5-20 s on a loaded 2-core machine).
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from conftest import TOY_ID, TOY_NAME, PRETRAIN_FAST, run
from synthetic_weights import SMALL, nnssl_checkpoint, write_hf_folder

pytestmark = pytest.mark.slow
MRI_ID, MRI_NAME = 971, "Dataset971_VoCoMRI2"  # an id no other test uses (the nnU-Net folders are shared)
TR = "nnUNetTrainerVoCo_smoke"


def _write_mri_raw(raw: str, n_cases: int = 6, shape=(24, 40, 40)) -> None:
    """Isotropic 1 mm, two MR-like channels (T1, T2 contrasts of one ellipsoid 'lesion'), labels 0/1."""
    import SimpleITK as sitk

    folder = os.path.join(raw, MRI_NAME)
    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    rng = np.random.default_rng(1)
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    for i in range(n_cases):
        c = np.array(shape) / 2 + rng.integers(-3, 4, 3)
        lesion = ((z - c[0]) / 5) ** 2 + ((y - c[1]) / 7) ** 2 + ((x - c[2]) / 6) ** 2 < 1
        head = ((y - shape[1] / 2) / 17) ** 2 + ((x - shape[2] / 2) / 16) ** 2 < 1
        for channel, (tissue, bright) in enumerate(((300.0, 500.0), (200.0, 900.0))):
            img = head * tissue + lesion * (bright - tissue) + rng.normal(0, 20, shape)
            im = sitk.GetImageFromArray(img.astype(np.float32))
            sitk.WriteImage(im, os.path.join(folder, "imagesTr", f"mri_{i:03d}_{channel:04d}.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(lesion.astype(np.uint8)),
                        os.path.join(folder, "labelsTr", f"mri_{i:03d}.nii.gz"))
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump({"channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "lesion": 1},
                   "numTraining": n_cases, "file_ending": ".nii.gz", "name": "VoCoMRI2"}, f)


def _log(folder: str) -> str:
    fold = os.path.join(folder, "fold_0")
    return open(os.path.join(fold, next(f for f in os.listdir(fold) if f.startswith("training_log")))).read()


def _encoder(path):
    return torch.load(path, weights_only=True)["encoder"]


def _load_in_trainer(env, weights, monkeypatch, plans="nnUNetPlans"):
    """``load_voco_weights`` of the smoke trainer built as nnUNetv2_train builds it, in this process."""
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_voco.finetune.weights_loading import load_voco_weights
    from nnunet_voco.trainers.discovery import register_in_environment

    monkeypatch.setenv("nnUNet_extTrainer", os.environ.get("nnUNet_extTrainer", ""))
    register_in_environment()
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, env[k])
    monkeypatch.setenv("nnUNet_voco_weights", weights)
    trainer = get_trainer_from_args(str(MRI_ID), "3d_fullres", 0, TR, plans, device=torch.device("cpu"))
    trainer.initialize()
    return load_voco_weights(trainer)


def _ours(monkeypatch, capsys, env, command, argv, code=0) -> str:
    """One of our commands in this process with ``env``'s nnU-Net folders; returns stdout (stderr if it fails)."""
    import importlib

    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_voco_weights"):
        monkeypatch.setenv(k, env[k]) if k in env else monkeypatch.delenv(k, raising=False)
    module = {"voco_import_weights": "nnunet_voco.commands.import_weights", "voco_plan_like": "nnunet_voco.commands.plan_like",
              "voco_export_weights": "nnunet_voco.commands.export_weights", "voco_pretrain": "nnunet_voco.pretrain.cli"}[command]
    capsys.readouterr()
    assert importlib.import_module(module).main(argv) == code, capsys.readouterr()
    captured = capsys.readouterr()
    return captured.out if code == 0 else captured.err


def test_isotropic_two_channel_chain(planned_toy, tmp_path, monkeypatch, capsys):
    env = dict(planned_toy)

    def ours(command, *argv, code=0):
        return _ours(monkeypatch, capsys, env, command, list(argv), code)

    _write_mri_raw(env["nnUNet_raw"])
    run(["nnUNetv2_plan_and_preprocess", "-d", str(MRI_ID), "-c", "3d_fullres", "-np", "1", "-npfp", "1"], env)
    source = write_hf_folder(str(tmp_path / "ResEnc-OpenMind-VoCo"), nnssl_checkpoint("release", "cpu", SMALL, seed=7))
    weights = str(tmp_path / "imported.pth")

    out = ours("voco_import_weights", source, "-o", weights)
    assert "format: nnssl" in out and "encoder (stem + stages) 50" in out and "VoCo projector 6" in out
    out = ours("voco_import_weights", "--inspect", weights, "-d", str(MRI_ID))
    assert f"fit with {MRI_NAME} nnUNetPlans 3d_fullres: NO, the weights are a ResidualEncoderUNet" in out
    assert f"run `voco_plan_like {weights} -d {MRI_ID} -p nnUNetPlans`" in out

    # the trainer with plans of another network family refuses, naming the fix (in this process: no training)
    with pytest.raises(RuntimeError, match=rf"does not fit nnUNetPlans/3d_fullres: the weights are a ResidualEncoderUNet"
                                           rf".*run `voco_plan_like {weights} -d {MRI_ID} -p nnUNetPlans`"):
        _load_in_trainer(env, weights, monkeypatch)

    # voco_pretrain --init with plans that do not build the weights' encoder: one line, exit 2, no run folder
    refused = ours("voco_pretrain", "-d", str(MRI_ID), "--init", weights, "--num_steps", "1", *PRETRAIN_FAST, code=2)
    assert "voco_plan_like" in refused and len(refused.strip().splitlines()) == 1
    assert not os.path.exists(os.path.join(env["nnUNet_results"], MRI_NAME, "VoCo__nnUNetPlans__3d_fullres"))

    out = ours("voco_plan_like", weights, "-d", str(MRI_ID), "-o", "likeVoCo")
    assert "(topology of the weights)" in out and "normalisation ['ZScoreNormalization', 'ZScoreNormalization']" in out
    assert f"nnUNetv2_preprocess -d {MRI_ID} -plans_name likeVoCo -c 3d_fullres" in out
    again = ours("voco_plan_like", weights, "-d", str(MRI_ID), "-p", "likeVoCo")
    assert "already builds the weights' encoder (50/50 tensors load, input channels adapted); nothing written" in again
    run(["nnUNetv2_preprocess", "-d", str(MRI_ID), "-plans_name", "likeVoCo", "-c", "3d_fullres", "-np", "1"], env)

    # continued pre-training from the imported weights, then --c must resume its own state, not the init weights
    pre = str(tmp_path / "pretrain")
    flags = ["-d", str(MRI_ID), "-p", "likeVoCo", "--init", weights, "--head_dim", "64", "-o", pre,
             "--num_steps", "2", "--val_cases", "1", "--val_windows", "2", "--val_every", "2"] + PRETRAIN_FAST
    log = ours("voco_pretrain", *flags)
    assert "VoCo: --init: loaded 50/50 encoder tensors" in log and "projector loaded (6 tensors)" in log
    assert log.index("--init: loaded") < log.index("held-out")  # the step-0 monitor measured the imported encoder
    trained = _encoder(os.path.join(pre, "voco_encoder.pth"))
    init = _encoder(weights)
    assert any(not torch.equal(trained[k], init[k].expand_as(trained[k])) for k in trained)
    resumed = ours("voco_pretrain", *flags, "--c")
    assert "continuing from" in resumed
    assert all(torch.equal(v, trained[k]) for k, v in _encoder(os.path.join(pre, "voco_encoder.pth")).items())

    # fine-tuning in stock nnU-Net: N/N, the first convolution adapted to 2 channels, citations printed
    env_w = dict(env, nnUNet_voco_weights=weights)
    run(["nnUNetv2_train", str(MRI_ID), "3d_fullres", "0", "-tr", TR, "-p", "likeVoCo", "-device", "cpu"], env_w)
    folder = os.path.join(env["nnUNet_results"], MRI_NAME, f"{TR}__likeVoCo__3d_fullres")
    train_log = _log(folder)
    assert "VoCo: loaded 50/50 encoder tensors" in train_log and "imported nnssl" in train_log
    assert "VoCo: adaptation: input projection stem.convs.0.conv.weight adapted 1 -> 2 channels" in train_log
    assert "VoCo: please cite VoCo" in train_log
    inp = tmp_path / "in"
    inp.mkdir()
    for c in (0, 1):
        shutil.copy(os.path.join(env["nnUNet_raw"], MRI_NAME, "imagesTr", f"mri_001_{c:04d}.nii.gz"), inp)
    run(["nnUNetv2_predict", "-i", str(inp), "-o", str(tmp_path / "pred"), "-d", str(MRI_ID), "-c", "3d_fullres",
         "-tr", TR, "-p", "likeVoCo", "-f", "0", "-device", "cpu", "--disable_tta"], env)
    assert os.path.isfile(tmp_path / "pred" / "mri_001.nii.gz")
    run(["nnUNetv2_find_best_configuration", str(MRI_ID), "-c", "3d_fullres", "-tr", TR, "-p", "likeVoCo", "-f", "0",
         "--disable_ensembling", "-np", "1"], env)
    run(["nnUNetv2_export_model_to_zip", "-d", str(MRI_ID), "-o", str(tmp_path / "model.zip"), "-c", "3d_fullres",
         "-tr", TR, "-p", "likeVoCo", "-f", "0"], env)
    assert os.path.getsize(tmp_path / "model.zip") > 0

    # our continued run out in the nnssl layout, and back in: the same tensors
    exported = str(tmp_path / "nnssl_export")
    out = ours("voco_export_weights", pre, "-o", exported)
    assert "self-check" in out and "projector 6 tensors" in out
    back = str(tmp_path / "back.pth")
    ours("voco_import_weights", exported, "-o", back)
    assert all(torch.equal(v, trained[k]) for k, v in _encoder(back).items()) and set(_encoder(back)) == set(trained)
    # the checkpoint nnU-Net itself wrote (numpy in its log) imports through the allow-list
    out = ours("voco_import_weights", os.path.join(folder, "fold_0", "checkpoint_final.pth"), "--inspect")
    assert "format: nnU-Net checkpoint" in out and "numpy allow-list" in out and "encoder (stem + stages) 50" in out


def test_anisotropic_ct_chain_averages_kernels_and_keeps_the_extra_stage_random(planned_toy, tmp_path, monkeypatch,
                                                                                 capsys):
    env = dict(planned_toy)
    source = str(tmp_path / "voco.pth")
    torch.save(nnssl_checkpoint("release", "cpu", SMALL, seed=8), source)
    weights = str(tmp_path / "imported.pth")
    _ours(monkeypatch, capsys, env, "voco_import_weights", [source, "-o", weights])
    out = _ours(monkeypatch, capsys, env, "voco_plan_like", [weights, "-d", str(TOY_ID), "--topology", "dataset", "-o",
                                                              "likeVoCoDS"])
    assert "kernels 133x333x333x333" in out and "4 stages, widths [8, 16, 32, 32]" in out
    run(["nnUNetv2_preprocess", "-d", str(TOY_ID), "-plans_name", "likeVoCoDS", "-c", "3d_fullres", "-np", "1"], env)
    run(["nnUNetv2_train", str(TOY_ID), "3d_fullres", "0", "-tr", TR, "-p", "likeVoCoDS", "-device", "cpu"],
        dict(env, nnUNet_voco_weights=weights))
    folder = os.path.join(env["nnUNet_results"], TOY_NAME, f"{TR}__likeVoCoDS__3d_fullres")
    log = _log(folder)
    assert "VoCo: loaded 50/66 encoder tensors" in log
    assert "kernels averaged over spatial axis 0 (3 in the weights, 1 here) in stage(s) 0 and the stem: 3 tensors" in log
    assert "stage 3: 16 tensors keep their random initialisation" in log
    assert "CT stays CT" in log  # MRI-pretrained (ZScore) weights on CT: said, the CT normalisation kept
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(os.path.join(env["nnUNet_raw"], TOY_NAME, "imagesTr", "toy_001_0000.nii.gz"), inp)
    run(["nnUNetv2_predict", "-i", str(inp), "-o", str(tmp_path / "pred"), "-d", str(TOY_ID), "-c", "3d_fullres",
         "-tr", TR, "-p", "likeVoCoDS", "-f", "0", "-device", "cpu", "--disable_tta"], env)
    assert os.path.isfile(tmp_path / "pred" / "toy_001.nii.gz")
