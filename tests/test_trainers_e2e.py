"""nnUNetTrainerVoCo through the stock nnU-Net commands, with nnUNet_extTrainer not set by the user."""
import os
import shutil

import pytest
import torch

from conftest import TOY_ID, TOY_NAME, run

pytestmark = pytest.mark.slow
TR = "nnUNetTrainerVoCo_smoke"


def _in_process_env(env, monkeypatch):
    """This process as ``nnUNetv2_train`` would see it: the env's folders, and the trainer shim on
    ``nnUNet_extTrainer`` (in a venv made just before pytest started, the start-up hook that sets it
    is installed by the first ``voco_*`` command, which may run after this process started)."""
    from nnunet_voco.trainers.discovery import register_in_environment

    monkeypatch.setenv("nnUNet_extTrainer", os.environ.get("nnUNet_extTrainer", ""))  # restored afterwards
    register_in_environment()
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, env[k])


def _trainer(env, monkeypatch, name=TR, fold=0):
    from nnunetv2.run.run_training import get_trainer_from_args

    _in_process_env(env, monkeypatch)
    trainer = get_trainer_from_args(str(TOY_ID), "3d_fullres", fold, name, device=torch.device("cpu"))
    trainer.initialize()
    return trainer


@pytest.fixture(scope="module")
def trained(pretrained_toy):
    env, voco_folder = pretrained_toy
    assert "nnUNet_extTrainer" not in env
    out = run(["nnUNetv2_train", str(TOY_ID), "3d_fullres", "0", "-tr", TR, "-device", "cpu"], env)
    folder = os.path.join(env["nnUNet_results"], TOY_NAME, f"{TR}__nnUNetPlans__3d_fullres")
    return env, voco_folder, folder, out


def test_train_loads_all_encoder_tensors_loudly(trained):
    env, voco_folder, folder, out = trained
    log = open(next(os.path.join(folder, "fold_0", f) for f in os.listdir(os.path.join(folder, "fold_0"))
                    if f.startswith("training_log"))).read()
    line = next(l for l in log.splitlines() if "VoCo: loaded" in l)
    n, m = line.split("VoCo: loaded ")[1].split(" ")[0].split("/")
    assert n == m and int(n) > 0, line
    assert os.path.join(voco_folder, "voco_encoder.pth") in line and "preset v2, 4 steps" in line
    assert os.path.isfile(os.path.join(folder, "fold_0", "checkpoint_final.pth"))
    assert os.path.isfile(os.path.join(folder, "fold_0", "validation", "summary.json"))


def test_predict_and_export_need_no_pretraining_files(trained, tmp_path):
    env, voco_folder, folder, _ = trained
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(os.path.join(env["nnUNet_raw"], TOY_NAME, "imagesTr", "toy_001_0000.nii.gz"), inp)
    hidden = voco_folder + "_hidden"
    os.rename(voco_folder, hidden)
    try:
        run(["nnUNetv2_predict", "-i", str(inp), "-o", str(tmp_path / "pred"), "-d", str(TOY_ID), "-c", "3d_fullres",
             "-tr", TR, "-f", "0", "-device", "cpu", "--disable_tta"], env)
        assert os.path.isfile(tmp_path / "pred" / "toy_001.nii.gz")
        run(["nnUNetv2_find_best_configuration", str(TOY_ID), "-c", "3d_fullres", "-tr", TR, "-f", "0",
             "--disable_ensembling", "-np", "1"], env)
        run(["nnUNetv2_export_model_to_zip", "-d", str(TOY_ID), "-o", str(tmp_path / "model.zip"), "-c", "3d_fullres",
             "-tr", TR, "-f", "0"], env)
        fresh = dict(env, nnUNet_results=str(tmp_path / "fresh_results"))
        os.makedirs(fresh["nnUNet_results"])
        run(["nnUNetv2_install_pretrained_model_from_zip", str(tmp_path / "model.zip")], fresh)
        run(["nnUNetv2_predict", "-i", str(inp), "-o", str(tmp_path / "pred2"), "-d", str(TOY_ID), "-c", "3d_fullres",
             "-tr", TR, "-f", "0", "-device", "cpu", "--disable_tta"], fresh)
        assert os.path.isfile(tmp_path / "pred2" / "toy_001.nii.gz")
    finally:
        os.rename(hidden, voco_folder)


def test_encoder_equals_checkpoint_and_decoder_does_not(pretrained_toy, monkeypatch):
    from nnunet_voco.checkpoint import load_encoder
    from nnunet_voco.finetune.weights_loading import load_voco_weights

    env, voco_folder = pretrained_toy
    trainer = _trainer(env, monkeypatch, fold=2)
    decoder_before = {k: v.clone() for k, v in trainer.network.decoder.state_dict().items() if "encoder." not in k}
    report = load_voco_weights(trainer)
    state, _ = load_encoder(os.path.join(voco_folder, "voco_encoder.pth"))
    assert report.complete and len(report.loaded) == len(state)
    for k, v in state.items():
        torch.testing.assert_close(trainer.network.encoder.state_dict()[k], v)
    pretrained_network = torch.load(os.path.join(voco_folder, "pretrained_network.pth"), weights_only=True)
    differs = [k for k, v in trainer.network.decoder.state_dict().items()
               if "encoder." not in k and not torch.equal(v, pretrained_network["network_weights"]["decoder." + k])]
    assert differs  # the decoder is the trainer's own fresh initialisation
    assert all(torch.equal(decoder_before[k], v) for k, v in trainer.network.decoder.state_dict().items()
               if "encoder." not in k)


def test_wrong_architecture_names_the_field(pretrained_toy, planned_toy, monkeypatch):
    from nnunet_voco.finetune.weights_loading import load_voco_weights

    env, _ = pretrained_toy
    resenc = os.path.join(env["nnUNet_results"], TOY_NAME, "VoCo__nnUNetResEncUNetMPlans__3d_fullres",
                          "voco_encoder.pth")
    if not os.path.isfile(resenc):
        run(["voco_pretrain", "-d", str(TOY_ID), "-p", "nnUNetResEncUNetMPlans", "--num_steps", "1", "-device", "cpu",
             "--crop_size", "8", "16", "16", "--batch_size", "1", "--num_workers", "0"], env)
    trainer = _trainer(env, monkeypatch, fold=3)
    monkeypatch.setenv("nnUNet_voco_weights", resenc)
    with pytest.raises(RuntimeError, match=r"architecture.network_class_name is .*ResidualEncoderUNet in the "
                                           r"checkpoint but .*PlainConvUNet"):
        load_voco_weights(trainer)


def test_missing_weights_print_the_command(pretrained_toy, monkeypatch, tmp_path):
    from nnunet_voco.finetune.weights_loading import load_voco_weights

    env, _ = pretrained_toy
    trainer = _trainer(env, monkeypatch, fold=4)
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"run `voco_pretrain -d {TOY_ID} -c 3d_fullres`"):
        load_voco_weights(trainer)


def test_missing_weights_end_nnunetv2_train_in_one_line_and_leave_no_empty_fold(planned_toy, tmp_path):
    """Before: the message came at the end of a 42-line traceback and an empty fold_0 (with a log) stayed."""
    from nnunet_voco.trainers.discovery import shim_folder

    env = dict(planned_toy, nnUNet_results=str(tmp_path / "results"), nnUNet_extTrainer=shim_folder())
    os.makedirs(env["nnUNet_results"])
    out = run(["nnUNetv2_train", str(TOY_ID), "3d_fullres", "0", "-tr", TR, "-device", "cpu"], env, check=False)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"nnUNetv2_train: error: no VoCo weights for {TOY_NAME} (nnUNetPlans, 3d_fullres, cnn encoder) under "
        f"$nnUNet_results/*/VoCo__nnUNetPlans__3d_fullres/; run `voco_pretrain -d {TOY_ID} -c 3d_fullres` first, or "
        f"set nnUNet_voco_weights=/path/to/voco_encoder.pth")
    assert os.listdir(env["nnUNet_results"]) == []  # no fold_0, trainer or dataset folder left behind


def test_weights_pretrained_for_zero_steps_are_refused(pretrained_toy, monkeypatch, tmp_path):
    from nnunet_voco import artifacts
    from nnunet_voco.checkpoint import load_encoder
    from nnunet_voco.errors import UserInputError
    from nnunet_voco.finetune.weights_loading import load_voco_weights

    env, voco_folder = pretrained_toy
    state, meta = load_encoder(os.path.join(voco_folder, "voco_encoder.pth"))
    untrained = str(tmp_path / "voco_encoder.pth")
    artifacts.write_encoder(untrained, state, {**meta, "steps": 0})  # what `--num_steps 0` used to export
    trainer = _trainer(env, monkeypatch, fold=1)
    monkeypatch.setenv("nnUNet_voco_weights", untrained)
    with pytest.raises(UserInputError, match=f"{untrained} was pre-trained for 0 steps: it holds a randomly "
                                             f"initialised encoder, not a pre-trained one; run voco_pretrain with "
                                             f"--num_steps >= 1"):
        load_voco_weights(trainer)


_FILE_EVENTS = {"open", "os.listdir", "os.scandir"}
_seen_paths: list[str] | None = None  # filled by the audit hook while a test records


def _record_file_access(event, args):
    if _seen_paths is not None and event in _FILE_EVENTS and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _seen_paths.append(os.fsdecode(args[0]))


def test_swin_trainer_init_touches_no_weights_file_and_initialize_looks_up_once(pretrained_toy, monkeypatch):
    """Real file access, seen by a CPython audit hook: ``__init__`` opens nothing under the weights'
    folder; ``initialize()`` then reads the weights' metadata (which shows the hook sees the lookup)."""
    import sys

    from nnunetv2.run.run_training import get_trainer_from_args

    global _seen_paths
    env, voco_folder = pretrained_toy
    _in_process_env(env, monkeypatch)
    monkeypatch.setenv("nnUNet_voco_weights", os.path.join(voco_folder, "voco_encoder.pth"))
    sys.addaudithook(_record_file_access)  # cannot be removed; records only while _seen_paths is a list
    try:
        _seen_paths = []
        trainer = get_trainer_from_args(str(TOY_ID), "3d_fullres", 0, "nnUNetTrainerVoCoSwin_smoke",
                                        device=torch.device("cpu"))
        in_init = [p for p in _seen_paths if os.path.abspath(p).startswith(voco_folder)]
        _seen_paths = []
        trainer.initialize()
        in_initialize = [p for p in _seen_paths if os.path.abspath(p).startswith(voco_folder)]
    finally:
        _seen_paths = None
    assert in_init == []
    assert in_initialize, "the hook saw no access to the weights: the check above would be empty"
    assert trainer.voco_weights.path == os.path.join(voco_folder, "voco_encoder.pth")
