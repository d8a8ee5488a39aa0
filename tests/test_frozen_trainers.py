"""Frozen-encoder probe trainers through the stock nnU-Net commands: the encoder never changes.

The ``_demoquick`` variants seed from the fold, so the initial weights of a run can be rebuilt
in-process (same fold) and compared with its ``checkpoint_final.pth``.
"""
import os

import pytest
import torch

from conftest import TOY_ID, TOY_NAME, run

pytestmark = pytest.mark.slow
FROZEN, FROZEN_SCRATCH = "nnUNetTrainerVoCoFrozen_demoquick", "nnUNetTrainerVoCoFrozenScratch_demoquick"


def _initial_trainer(env, monkeypatch, name: str, fold: int = 0):
    from nnunetv2.run.run_training import get_trainer_from_args

    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, env[k])
    trainer = get_trainer_from_args(str(TOY_ID), "3d_fullres", fold, name, device=torch.device("cpu"))
    trainer.initialize()
    return trainer


def _fold(env, name: str) -> str:
    return os.path.join(env["nnUNet_results"], TOY_NAME, f"{name}__nnUNetPlans__3d_fullres", "fold_0")


def _final_weights(env, name: str) -> dict:
    return torch.load(os.path.join(_fold(env, name), "checkpoint_final.pth"), weights_only=False)["network_weights"]


def _split(state: dict) -> tuple[dict, dict]:
    encoder = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    decoder = {k: v for k, v in state.items() if k.startswith("decoder.") and ".encoder." not in k}
    return encoder, decoder


@pytest.fixture(scope="module")
def frozen_runs(pretrained_toy):
    env, voco_folder = pretrained_toy
    logs = {}
    for name in (FROZEN, FROZEN_SCRATCH):
        logs[name] = run(["nnUNetv2_train", str(TOY_ID), "3d_fullres", "0", "-tr", name, "-device", "cpu"], env).stdout
    return env, voco_folder, logs


def test_frozen_keeps_the_loaded_voco_encoder(frozen_runs, monkeypatch):
    from nnunet_voco.checkpoint import load_encoder

    env, voco_folder, logs = frozen_runs
    assert "VoCo: loaded" in logs[FROZEN] and "VoCo: encoder frozen" in logs[FROZEN]
    voco_state, _ = load_encoder(os.path.join(voco_folder, "voco_encoder.pth"))
    encoder, decoder = _split(_final_weights(env, FROZEN))
    assert set(encoder) == set(voco_state)
    for k, v in voco_state.items():
        assert torch.equal(encoder[k], v), k
    _, initial_decoder = _split(_initial_trainer(env, monkeypatch, FROZEN).network.state_dict())
    assert any(not torch.equal(decoder[k], v) for k, v in initial_decoder.items())


def test_frozen_scratch_keeps_its_random_encoder(frozen_runs, monkeypatch):
    env, _, logs = frozen_runs
    assert "VoCo: loaded" not in logs[FROZEN_SCRATCH]
    encoder, decoder = _split(_final_weights(env, FROZEN_SCRATCH))
    initial_encoder, initial_decoder = _split(_initial_trainer(env, monkeypatch, FROZEN_SCRATCH).network.state_dict())
    for k, v in initial_encoder.items():
        assert torch.equal(encoder[k], v), k
    assert any(not torch.equal(decoder[k], v) for k, v in initial_decoder.items())
    other_seed, _ = _split(_initial_trainer(env, monkeypatch, FROZEN_SCRATCH, fold=1).network.state_dict())
    assert any(not torch.equal(other_seed[k], v) for k, v in initial_encoder.items())  # fold = seed


def test_continuation_keeps_the_encoder_out_of_the_optimiser(frozen_runs, monkeypatch):
    env, _, _ = frozen_runs
    trainer = _initial_trainer(env, monkeypatch, FROZEN)
    trainer.load_checkpoint(os.path.join(_fold(env, FROZEN), "checkpoint_final.pth"))  # what --c does
    encoder_ids = {id(p) for p in trainer.network.encoder.parameters()}
    optimised = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert optimised and not encoder_ids & {id(p) for p in optimised}
    assert not any(p.requires_grad for p in trainer.network.encoder.parameters())
    assert [g["name"] for g in trainer.optimizer.param_groups] == ["decoder"]


def test_predict_with_a_frozen_trainer(frozen_runs, tmp_path):
    import shutil

    env, _, _ = frozen_runs
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(os.path.join(env["nnUNet_raw"], TOY_NAME, "imagesTr", "toy_001_0000.nii.gz"), inp)
    run(["nnUNetv2_predict", "-i", str(inp), "-o", str(tmp_path / "pred"), "-d", str(TOY_ID), "-c", "3d_fullres",
         "-tr", FROZEN_SCRATCH, "-f", "0", "-device", "cpu", "--disable_tta", "-npp", "0", "-nps", "0"], env)
    assert os.path.isfile(tmp_path / "pred" / "toy_001.nii.gz")
