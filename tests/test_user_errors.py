"""Bad input is refused up front, in one line, with exit code 2, and nothing is written (issues 20 and 21).

Pinned here: every numeric flag of ``voco_pretrain`` is checked before torch is imported or a folder
exists; ``--help`` loads no torch and shows every default; the one exit mapping of all commands
(:mod:`nnunet_voco.command_exit`); the wording of a rerun with a derived value; the progress-bar keys;
a crop whose deepest feature map is one voxel, refused for CNN and Swin encoders before any folder;
and the VoCo trainer's refusal leaving no empty fold folder behind.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import types

import pytest
import torch

from conftest import open_tiny_synthetic
from nnunet_voco import command_exit
from nnunet_voco.errors import UserInputError
from nnunet_voco.pretrain import cli, outputs
from nnunet_voco.pretrain.config import PretrainConfig
from nnunet_voco.storage.disk_errors import DiskWriteError


def _voco(argv, capsys) -> tuple[int, str]:
    code = cli.main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("flags, fragment", [
    (["--num_steps", "-5"], "--num_steps -5 must be an integer >= 1"),
    (["--num_steps", "0"], "--num_steps 0 must be an integer >= 1"),
    (["--batch_size", "0"], "--batch_size 0 must be an integer >= 1"),
    (["--lr", "0"], "--lr 0.0 must be > 0"),
    (["--lr", "nan"], "--lr nan must be a finite number"),
    (["--min_lr", "1e-3"], "--min_lr 0.001 exceeds --lr 0.0001"),
    (["--warmup_steps", "50", "--num_steps", "10"], "--warmup_steps 50 exceeds --num_steps 10"),
    (["--val_every", "0"], "--val_every 0 must be an integer >= 1"),
    (["--save_every", "0"], "--save_every 0 must be an integer >= 1"),
    (["--log_every", "-1"], "--log_every -1 must be an integer >= 1"),
    (["--num_targets", "0"], "--num_targets 0 must be an integer >= 1"),
    (["--num_workers", "-1"], "--num_workers -1 must be an integer >= 0"),
    (["--val_cases", "-1"], "--val_cases -1 must be an integer >= 0"),
    (["--crop_size", "0", "16", "16"], "--crop_size 0 16 16 needs 3 integers >= 1"),
    (["--grid", "1", "1", "1"], "--grid 1 1 1 gives a single base crop"),
    (["--flip_prob", "1.5"], "--flip_prob 1.5 is a probability"),
    (["--ema_momentum", "1"], "--ema_momentum 1.0 must be >= 0 and < 1"),
    (["--pos_weight", "0", "--neg_weight", "0", "--reg_weight", "0", "--inter_weight", "0"], "all 0"),
    (["--num_steps", "-5", "--lr", "-1"], "--num_steps -5 must be an integer >= 1; --lr -1.0 must be > 0"),
])
def test_every_numeric_flag_is_refused_up_front(tmp_path, capsys, monkeypatch, flags, fragment):
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.delenv(key, raising=False)  # refused before any folder variable is even read
    code, err = _voco(["-d", "1", "-o", str(tmp_path / "out")] + flags, capsys)
    assert code == 2 and err.startswith("voco_pretrain: error: ") and err.count("\n") == 1, err
    assert fragment in err
    assert not (tmp_path / "out").exists()


def test_defaults_pass_the_checks():
    assert PretrainConfig(datasets=("1",)).num_steps == 100_000
    with pytest.raises(UserInputError, match="--num_steps -5"):
        PretrainConfig(datasets=("1",), num_steps=-5)  # the library checks too, not only the command


def _fresh_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", errors="replace", timeout=120).stdout


def test_help_and_a_bad_flag_load_no_torch():
    """--help used to import torch, nnU-Net and the checkpoint code first (5.7 s); now neither path does."""
    out = _fresh_python("import sys\nfrom nnunet_voco.pretrain import cli\n"
                        "try:\n    cli.main(['--help'])\nexcept SystemExit as e:\n    print('exit', e.code)\n"
                        "print('torch' in sys.modules, 'nnunetv2' in sys.modules)\n"
                        "print(cli.main(['-d', '1', '--num_steps', '-5']), 'torch' in sys.modules)")
    assert out.splitlines()[-2:] == ["False False", "2 False"], out[-2000:]
    assert "exit 0" in out


def test_help_shows_every_default_and_names_the_axes():
    text = " ".join(cli.build_parser().format_help().split())
    assert "checkpoint_latest.pth writes. Default 500" in text and "the only host syncs). Default 10" in text
    assert "--crop_size N0 N1 N2" in text and "--grid N0 N1 N2" in text
    assert "preprocessed array axes 0, 1, 2" in text


# ============ the one exit mapping ============
class _Signalled(Exception):
    exit_code = 143


def _ends(error: BaseException | None, capsys, **kw) -> tuple[int, str]:
    def body():
        if error is not None:
            raise error
    code = command_exit.run_command("voco_x", body, **kw)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("error, kw, code, message", [
    (None, {}, 0, ""),
    (UserInputError("--foo 3 must be 2"), {}, 2, "voco_x: error: --foo 3 must be 2\n"),
    (FileNotFoundError("no such file x"), {}, 2, "voco_x: error: no such file x\n"),
    (RuntimeError("bad file\n  second line"), {"bad_input": (RuntimeError,)}, 2, "voco_x: error: bad file second line\n"),
    (DiskWriteError("/f/c.pth", "No space left on device"), {"bad_input": (RuntimeError,)}, 3,
     "voco_x: error: cannot write /f/c.pth (No space left on device)\n"),
    (RuntimeError("1 step failed"), {"failed": (RuntimeError,)}, 1, "voco_x: error: 1 step failed\n"),
    (_Signalled(), {"quiet_exit": (_Signalled,)}, 143, ""),
    (KeyboardInterrupt(), {"interrupted": "interrupted; resume"}, 130, "voco_x: interrupted; resume\n"),
])
def test_one_exit_mapping_for_every_command(capsys, error, kw, code, message):
    assert _ends(error, capsys, **kw) == (code, message)


def test_an_oserror_is_a_disk_error_only_when_the_disk_is_the_cause(tmp_path, capsys):
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "f"))
    assert _ends(full, capsys) == (3, f"voco_x: error: cannot write {tmp_path / 'f'} (No space left on device)\n")
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        _ends(ZeroDivisionError(), capsys)


# ============ wording ============
def test_a_rerun_names_a_derived_value_as_derived(tmp_path):
    folder = str(tmp_path)
    outputs.write_config(folder, PretrainConfig(datasets=("1",), crop_size=(16, 64, 64)), {})
    with pytest.raises(UserInputError) as error:
        outputs.prepare_output_folder(folder, PretrainConfig(datasets=("1",)))
    assert (f"{folder} holds a run with --crop_size 16 64 64 but this run has crop_size derived from the data (no "
            f"--crop_size); pass the same flags to continue it") in str(error.value)


def test_the_progress_bar_names_loss_terms_as_losses():
    from nnunet_voco.pretrain.loop import _LoopState, _log_window, _read_window

    class Bar:
        def set_postfix(self, **kw):
            self.postfix = kw

    class Log:
        def __call__(self, *parts, also_print=True):
            pass

        def metrics(self, row):
            pass

    log = Log()
    setup = types.SimpleNamespace(optimizer=types.SimpleNamespace(param_groups=[{"lr": 1e-4}]),
                                  layout=types.SimpleNamespace(window=(4, 4, 4)),
                                  ctx=types.SimpleNamespace(device=torch.device("cpu")))
    one = {"finite": torch.tensor(True), "padding_share": torch.tensor(0.0), **{
        k: torch.tensor(v) for k, v in (("loss", 1.5), ("pos", 0.58), ("neg", 0.2), ("reg", 0.1))}}
    bar = Bar()
    state = _LoopState(step=10, history=[], window=[one])
    _log_window(setup, types.SimpleNamespace(max_nonfinite=20), state, _read_window(state.window), bar, "unused", log)
    assert bar.postfix == {"loss": "1.5000", "pos_loss": "0.580", "reg_loss": "0.100"}


# ============ a crop that leaves the deepest feature map a single voxel ============
FIVE_STRIDE_2 = ((1, 1, 1),) + ((2, 2, 2),) * 5  # nnssl's ResEnc-L layout: total stride 32 on every axis


@pytest.mark.parametrize("encoder", [[], ["--encoder", "swin_b", "--swin_feature_size", "12"]])
def test_a_single_voxel_deepest_map_is_refused_before_any_folder(tmp_path, monkeypatch, capsys, encoder):
    """Before: ``--crop_size 32 32 32`` on these plans wrote the run folder and stopped at step 0 with PyTorch's
    "Expected more than 1 spatial element when training, got input size torch.Size([..., 1, 1, 1])"."""
    open_tiny_synthetic(tmp_path / "nn", monkeypatch, 983, 2, shape=(40, 72, 72), strides=FIVE_STRIDE_2,
                        patch_size=(64, 64, 64), features=[4, 8, 8, 8, 8, 8])
    out = tmp_path / "run"
    code, err = _voco(["-d", "983", "-p", "nnUNetResEncUNetMPlans", "--crop_size", "32", "32", "32", "-device", "cpu",
                       "--num_steps", "1", "-o", str(out)] + encoder, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err == ("voco_pretrain: error: crop size 32 x 32 x 32 leaves the encoder's deepest feature map 1 x 1 x 1 "
                   "voxel (total stride 32 x 32 x 32), a single position that instance normalisation cannot train "
                   "on; the smallest crops that work double one axis: --crop_size 64 32 32, 32 64 32 or 32 32 64\n")
    assert not out.exists()


# ============ the VoCo trainer's refusal ============
def test_a_refused_trainer_removes_only_what_it_created(tmp_path, capsys):
    from nnunet_voco.trainers.start_refusal import refuse_unusable_weights

    def trainer(base):
        fold = base / "nnUNetTrainerVoCo__nnUNetPlans__3d_fullres" / "fold_0"
        fold.mkdir(parents=True)
        (fold / "training_log_now.txt").write_text("citation banner")
        return types.SimpleNamespace(log_file=str(fold / "training_log_now.txt"), output_folder=str(fold),
                                     output_folder_base=str(fold.parent))

    fresh, kept = trainer(tmp_path / "fresh" / "Dataset001_A"), trainer(tmp_path / "kept" / "Dataset001_A")
    (tmp_path / "kept" / "Dataset001_A" / "earlier_run.json").write_text("{}")  # the dataset folder holds more
    for t in (fresh, kept):
        with pytest.raises(SystemExit) as stop, refuse_unusable_weights(t):
            raise FileNotFoundError("no VoCo weights for Dataset001_A ...; run `voco_pretrain -d 1` first")
        assert stop.value.code == 2
        assert capsys.readouterr().err == ("nnUNetv2_train: error: no VoCo weights for Dataset001_A ...; run "
                                           "`voco_pretrain -d 1` first\n")
    assert os.listdir(tmp_path / "fresh") == []  # log, fold, trainer and dataset folders: all made by this run
    assert sorted(os.listdir(tmp_path / "kept" / "Dataset001_A")) == ["earlier_run.json"]
    with pytest.raises(RuntimeError), refuse_unusable_weights(fresh):  # an incompatible file is not this path
        raise RuntimeError("does not fit")
