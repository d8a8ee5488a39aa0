"""SwinUNETR-v2 encoder, downstream network and import of official VoCo weights (CPU)."""
from __future__ import annotations

import os

import pytest
import torch

from nnunet_voco.checkpoint import load_encoder, transfer_encoder
from nnunet_voco.commands.import_weights import main as import_main
from nnunet_voco.encoders.swin import (
    SWIN_ENCODER_PREFIXES,
    SWIN_IN_PROJ_KEYS,
    build_swin_encoder,
    build_swin_network,
    check_swin_input_size,
    swin_patch_size,
)
from nnunet_voco.weights.swin_release import convert_official, normalise_key, split_state

F = 12  # smallest valid feature size: fast on CPU, same key layout as B/L/H
N_ENCODER = 145  # official SSL-head tensor count (VOCO_SPEC.md 4.1), incl. 8 relative_position_index buffers
N_DECODER = 22  # decoder1-5 (4 each) + out (2) of a full SwinUNETR-v2


def _swinunetr(in_channels=1, out_channels=21, feature_size=F):
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(0)
    return SwinUNETR(in_channels=in_channels, out_channels=out_channels, feature_size=feature_size, use_v2=True)


@pytest.fixture(scope="module")
def official_state():
    """A VoComni-like full SwinUNETR-v2 state dict (21 classes) with the official key layout."""
    return _swinunetr().state_dict()


def _encoder_only(state):
    return {k: v for k, v in state.items() if k.startswith(tuple(SWIN_ENCODER_PREFIXES))}


def _variant(state, kind):
    enc = _encoder_only(state)
    if kind == "head":
        return enc
    if kind == "module":
        return {"state_dict": {"module." + k: v for k, v in enc.items()}}
    if kind == "backbone":
        return {"net": {"module.backbone." + k: v for k, v in enc.items()}, "epoch": 3}
    if kind == "swin_vit":
        return {"student": {k.replace("swinViT.", "swin_vit."): v for k, v in enc.items()}}
    if kind == "v1_training":
        return {**{"student." + k: v for k, v in enc.items()}, **{"teacher." + k: v for k, v in enc.items()}}
    if kind == "vocomni":
        return {"network_weights": dict(state)}
    raise ValueError(kind)


def test_encoder_forward_shapes():
    bundle = build_swin_encoder(1, F)
    with torch.no_grad():
        maps = bundle.module(torch.randn(1, 1, 64, 64, 64))
    assert [(m.shape[1], m.shape[2]) for m in maps] == [(12, 64), (12, 32), (24, 16), (48, 8), (192, 2)]
    assert bundle.stage_channels == [12, 12, 24, 48, 192] and bundle.embedding_dim == 24 * F
    assert bundle.divisor == (32, 32, 32)


def test_encoder_keys_are_the_network_encoder_keys():
    bundle = build_swin_encoder(1, F)
    net = build_swin_network(1, 3, F)
    meta = bundle.meta
    assert meta["encoder_family"] == "swin" and meta["key_to_encoder"] == "swin"
    assert meta["architecture"] == {"class": "monai.networks.nets.SwinUNETR", "feature_size": F, "use_v2": True,
                                    "in_channels": 1}
    target = net.get_submodule(meta["key_to_encoder"]).state_dict()
    assert set(bundle.state_fn()) == {k for k in target if k.startswith(tuple(meta["encoder_key_prefixes"]))}
    assert len(bundle.state_fn()) == N_ENCODER
    assert all(k + ".weight" in target for k in meta["keys_to_in_proj"])
    assert not hasattr(bundle.module.swin, "decoder1") and not hasattr(bundle.module.swin, "out")


def test_tensor_counts_for_swin_b():
    """Official B files (F=48): SSL head 145 tensors; VoComni 167 = 145 encoder + 22 decoder/head."""
    state = _swinunetr(feature_size=48).state_dict()
    encoder, skipped = split_state(state)
    assert (len(state), len(encoder), sum(skipped.values())) == (167, N_ENCODER, N_DECODER)
    assert skipped == {"decoder1": 4, "decoder2": 4, "decoder3": 4, "decoder4": 4, "decoder5": 4, "out": 2}
    assert state["swinViT.patch_embed.proj.weight"].shape == (48, 1, 2, 2, 2)


@pytest.mark.parametrize("patch, expected", [
    ((40, 224, 192), (32, 224, 192)), ((80, 160, 112), (64, 160, 96)), ((20, 40, 36), (32, 64, 32)),
    ((64, 64, 64), (64, 64, 64)), ((128, 112, 112), (128, 96, 96)),
])
def test_swin_patch_size(patch, expected):
    assert swin_patch_size(patch) == expected
    check_swin_input_size(expected)


def test_input_size_error_names_axis_and_nearest_size():
    with pytest.raises(ValueError, match=r"array axis 1 has 40 .* nearest valid size is 32"):
        check_swin_input_size((64, 40, 64))
    with pytest.raises(ValueError, match="1-voxel bottleneck"):
        check_swin_input_size((32, 32, 32))


def test_normalise_key():
    assert normalise_key("module.backbone.swin_vit.layers1.0.x") == "swinViT.layers1.0.x"
    assert normalise_key("backbone.module.encoder10.layer.conv1.conv.weight") == "encoder10.layer.conv1.conv.weight"


@pytest.mark.parametrize("kind, n_skipped", [("head", 0), ("module", 0), ("backbone", 0), ("swin_vit", 0),
                                             ("v1_training", N_ENCODER), ("vocomni", N_DECODER)])
def test_import_and_transfer_exact_counts(tmp_path, official_state, kind, n_skipped, capsys):
    src, out = str(tmp_path / "official.pt"), str(tmp_path / "voco_encoder.pth")
    torch.save(_variant(official_state, kind), src)
    assert import_main([src, "-o", out]) == 0
    assert f"imported {N_ENCODER} encoder tensors, skipped {n_skipped} " in capsys.readouterr().out
    state, meta = load_encoder(out)
    assert meta["preset"] == "official" and meta["plans_name"] is None and meta["steps"] is None
    net = build_swin_network(1, 3, F)
    decoder_before = {k: v.clone() for k, v in net.swin.state_dict().items() if k.startswith(("decoder", "out"))}
    report = transfer_encoder(net, state, meta)
    assert (len(report.loaded), report.expected, report.adapted) == (N_ENCODER, N_ENCODER, [])
    after = net.swin.state_dict()
    assert all(torch.equal(after[k], official_state[k]) for k in _encoder_only(official_state))
    assert all(torch.equal(after[k], v) for k, v in decoder_before.items())


def test_channel_adaptation_in_transfer_and_import(tmp_path, official_state, capsys):
    src, out = str(tmp_path / "head.pt"), str(tmp_path / "enc.pth")
    torch.save(_encoder_only(official_state), src)
    assert import_main([src, "-o", out]) == 0
    state, meta = load_encoder(out)
    report = transfer_encoder(build_swin_network(2, 3, F), state, meta, adapt_channels=True)
    assert len(report.loaded) == N_ENCODER and sorted(report.adapted) == sorted(k + ".weight" for k in SWIN_IN_PROJ_KEYS)
    assert import_main([src, "-o", out, "--in_channels", "2"]) == 0
    assert "first conv adapted 1 -> 2 input channels (3 tensors)" in capsys.readouterr().out
    state, meta = load_encoder(out)
    assert meta["architecture"]["in_channels"] == 2
    report = transfer_encoder(build_swin_network(2, 3, F), state, meta)
    assert len(report.loaded) == N_ENCODER and report.adapted == []


def test_feature_size_is_inferred_and_checked(tmp_path, official_state):
    src = str(tmp_path / "head.pt")
    torch.save(_encoder_only(official_state), src)
    assert convert_official(src).meta["architecture"]["feature_size"] == F
    with pytest.raises(ValueError, match="feature size 12"):
        convert_official(src, feature_size=48)


class _Payload:  # a pickled class instance: weights_only must refuse it
    pass


@pytest.mark.parametrize("content", ["text", "resenc", "pickle", "missing"])
def test_bad_files_exit_2_with_one_line(tmp_path, capsys, content):
    src = str(tmp_path / "bad.pt")
    if content == "text":
        with open(src, "w") as f:
            f.write("not a checkpoint")
    elif content == "resenc":
        torch.save({"state_dict": {"encoder.stem.convs.0.conv.weight": torch.zeros(32, 1, 3, 3, 3)}}, src)
    elif content == "pickle":
        torch.save({"state_dict": {}, "payload": _Payload()}, src)
    assert import_main([src, "-o", str(tmp_path / "out.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("voco_import_weights: error:") and "\n" not in err
    assert not os.path.exists(tmp_path / "out.pth")
    if content == "pickle":
        assert "weights_only" in err


def test_trainer_builds_network_from_configuration():
    from types import SimpleNamespace

    from nnunet_voco.trainers.swin_trainers import FEATURE_SIZE_KEY, nnUNetTrainerVoCoSwin

    cm = SimpleNamespace(configuration={FEATURE_SIZE_KEY: F})
    net = nnUNetTrainerVoCoSwin.build_network_architecture(None, cm, 2, 4, False)
    assert net.swin.swinViT.patch_embed.proj.weight.shape == (F, 2, 2, 2, 2)
    assert net.swin.out.conv.conv.weight.shape[0] == 4 and net.decoder.deep_supervision is False


@pytest.mark.slow
def test_swin_end_to_end(planned_toy, tmp_path):
    """plan -> voco_pretrain --encoder swin_b (F=12) -> nnUNetv2_train (Swin smoke) -> nnUNetv2_predict."""
    import json

    import SimpleITK as sitk
    from conftest import TOY_ID, TOY_NAME, run

    env = dict(planned_toy)
    pre = str(tmp_path / "pre")
    run(["voco_pretrain", "-d", str(TOY_ID), "--encoder", "swin_b", "--swin_feature_size", str(F), "-device", "cpu",
         "--num_steps", "1", "--batch_size", "1", "--grid", "1", "2", "2", "--num_targets", "1", "--num_workers", "0",
         "--precision", "fp32", "-o", pre], env)
    env["nnUNet_voco_weights"] = os.path.join(pre, "voco_encoder.pth")
    trainer = "nnUNetTrainerVoCoSwin_smoke"
    proc = run(["nnUNetv2_train", str(TOY_ID), "3d_fullres", "0", "-tr", trainer, "-device", "cpu"], env)
    assert f"VoCo: loaded {N_ENCODER}/{N_ENCODER} encoder tensors" in proc.stdout
    out = os.path.join(env["nnUNet_results"], TOY_NAME, f"{trainer}__nnUNetPlans__3d_fullres")
    assert os.path.isfile(os.path.join(out, "fold_0", "checkpoint_final.pth"))
    with open(os.path.join(out, "plans.json")) as f:
        config = json.load(f)["configurations"]["3d_fullres"]
    assert all(s % 32 == 0 for s in config["patch_size"]) and config["voco_swin_feature_size"] == F
    # prediction: the sliding window uses the copied plans' patch (the network rejects any other size)
    src, pin, pout = os.path.join(env["nnUNet_raw"], TOY_NAME, "imagesTr"), tmp_path / "pin", tmp_path / "pout"
    pin.mkdir()
    os.symlink(os.path.join(src, "toy_000_0000.nii.gz"), pin / "toy_000_0000.nii.gz")
    run(["nnUNetv2_predict", "-i", str(pin), "-o", str(pout), "-d", str(TOY_ID), "-c", "3d_fullres", "-tr", trainer,
         "-f", "0", "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"], env)
    seg = sitk.ReadImage(str(pout / "toy_000.nii.gz"))
    assert seg.GetSize() == sitk.ReadImage(os.path.join(src, "toy_000_0000.nii.gz")).GetSize()
