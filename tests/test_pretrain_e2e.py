"""voco_pretrain end to end through the real commands (tiny dataset incl. one real volume, CPU)."""
import json
import os
import subprocess
import time

import pytest
import torch

from conftest import PRETRAIN_FAST, TOY_ID, TOY_NAME, run, script
from nnunet_voco.checkpoint import load_encoder

pytestmark = pytest.mark.slow


def test_outputs_exist_and_load_safely(pretrained_toy):
    env, folder = pretrained_toy
    for name in ("checkpoint_latest.pth", "checkpoint_final.pth", "voco_encoder.pth", "pretrained_network.pth",
                 "progress.png", "metrics.jsonl", "config.json", "voco_encoder.json"):
        assert os.path.isfile(os.path.join(folder, name)), name
    assert any(f.startswith("training_log_") for f in os.listdir(folder))
    for name in ("checkpoint_final.pth", "voco_encoder.pth", "pretrained_network.pth"):
        torch.load(os.path.join(folder, name), weights_only=True, map_location="cpu")
    state, meta = load_encoder(os.path.join(folder, "voco_encoder.pth"))
    assert meta["steps"] == 4 and meta["preset"] == "v2" and meta["datasets"] == [TOY_NAME]
    assert meta["architecture"]["network_class_name"].endswith("PlainConvUNet")
    assert meta["crop_size"] == [8, 16, 16] and meta["grid"] == [1, 3, 3] and meta["num_input_channels"] == 1
    rows = [json.loads(line) for line in open(os.path.join(folder, "metrics.jsonl"))]
    train = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train] == [2, 4] and all(r["loss"] > 0 for r in train)
    assert all(0 <= r["padding_share"] <= 1 for r in train)
    held_out = [r for r in rows if "val_position_accuracy" in r]
    assert [r["step"] for r in held_out] == [0, 4]  # step 0 (untrained) and the end
    for r in held_out:
        assert 0 <= r["val_position_accuracy"] <= 1 and r["val_chance"] == pytest.approx(1 / 9)
        assert r["val_chance"] <= r["val_prior"] <= 1
        # the training-window twin: same protocol, same number of targets, and the gap is their difference
        assert 0 <= r["train_position_accuracy"] <= 1 and r["train_targets"] == r["val_targets"] == 4 * 24
        assert r["train_val_gap"] == pytest.approx(r["train_position_accuracy"] - r["val_position_accuracy"])
    config = json.load(open(os.path.join(folder, "config.json")))
    assert len(config["val_cases"]) == 2 and config["crop_size"] == [8, 16, 16] and config["grid"] == [1, 3, 3]


def test_pretrained_network_fits_nnunets_stock_loader(pretrained_toy):
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    from nnunet_voco.nnunet import build_plans_network
    from nnunet_voco.nnunet import open_dataset

    env, folder = pretrained_toy
    os.environ["nnUNet_preprocessed"] = env["nnUNet_preprocessed"]
    source = open_dataset(TOY_ID, "nnUNetPlans", "3d_fullres")
    network = build_plans_network(source.plans_manager, source.configuration_manager, 1, 2)
    load_pretrained_weights(network, os.path.join(folder, "pretrained_network.pth"), verbose=False)
    state, _ = load_encoder(os.path.join(folder, "voco_encoder.pth"))
    for k, v in state.items():
        torch.testing.assert_close(network.encoder.state_dict()[k], v)


def test_stock_pretrained_weights_run_starts(pretrained_toy):
    env, folder = pretrained_toy
    cmd = [script("nnUNetv2_train"), str(TOY_ID), "3d_fullres", "1", "-tr", "nnUNetTrainerVoCoScratch_smoke", "-device", "cpu",
           "-pretrained_weights", os.path.join(folder, "pretrained_network.pth")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8", errors="replace")
    seen, deadline = [], time.time() + 300
    for line in proc.stdout:
        seen.append(line)
        if "Epoch 0" in line or time.time() > deadline:
            break
    proc.kill()
    proc.wait()
    assert any("Epoch 0" in s for s in seen), "".join(seen[-40:])
    assert not any("Traceback" in s for s in seen)


def test_resenc_m_plans_and_continue(planned_toy):
    env = planned_toy
    args = ["voco_pretrain", "-d", str(TOY_ID), "-p", "nnUNetResEncUNetMPlans", "--save_every", "2"] + PRETRAIN_FAST
    run(args + ["--num_steps", "2"], env)
    folder = os.path.join(env["nnUNet_results"], TOY_NAME, "VoCo__nnUNetResEncUNetMPlans__3d_fullres")
    _, meta = load_encoder(os.path.join(folder, "voco_encoder.pth"))
    assert meta["architecture"]["network_class_name"].endswith("ResidualEncoderUNet") and meta["steps"] == 2
    again = run(args + ["--num_steps", "2"], env, check=False)
    assert again.returncode == 2 and "--c" in again.stderr and "--overwrite" in again.stderr
    out = run(args + ["--num_steps", "4", "--c"], env)
    assert "continuing from" in out.stdout and "at step 2" in out.stdout
    rows = [json.loads(line) for line in open(os.path.join(folder, "metrics.jsonl"))]
    assert [r["step"] for r in rows if "loss" in r] == [2, 4]
    assert [r["step"] for r in rows if "val_position_accuracy" in r] == [0, 2, 4]  # resumed: no second step 0
    assert load_encoder(os.path.join(folder, "voco_encoder.pth"))[1]["steps"] == 4


@pytest.mark.parametrize("args, message", [
    (["-d", "4242"], "unknown dataset '4242'"),
    (["-d", str(TOY_ID), "-p", "nnUNetFooPlans"], "plans 'nnUNetFooPlans' not found"),
    (["-d", str(TOY_ID), "-c", "2d_foo"], "configuration '2d_foo' is not in"),
    # every bad axis at once, named as the plans order them (z, y, x at 2.5 x 1 x 1 mm), with a crop that works
    (["-d", str(TOY_ID), "--crop_size", "8", "12", "15"], "12 on axis 1 (1 mm), 15 on axis 2 (1 mm); pass "
                                                          "--crop_size 8 16 16"),
])
def test_bad_input_is_one_line_exit_2(planned_toy, args, message, tmp_path):
    out = run(["voco_pretrain"] + args + ["-device", "cpu", "-o", str(tmp_path / "out")], planned_toy, check=False)
    assert out.returncode == 2 and message in out.stderr
    assert len([l for l in out.stderr.splitlines() if l.startswith("voco_pretrain: error")]) == 1
    assert not (tmp_path / "out").exists()
