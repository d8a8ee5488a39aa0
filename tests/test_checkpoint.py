"""Checkpoint files: round trip, schema checks, safe loading and the loud encoder transfer."""
import os

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

from nnunet_voco import checkpoint
from nnunet_voco.checkpoint import CheckpointError, adapt_input_channels, load_encoder, save_encoder, transfer_encoder

NORM = {"eps": 1e-5, "affine": True}


def resenc(in_ch=1, features=(4, 8, 16), classes=3):
    return ResidualEncoderUNet(in_ch, len(features), features, torch.nn.Conv3d, 3, (1, 2, 2), (1, 2, 2), classes,
                               (1, 1), True, torch.nn.InstanceNorm3d, NORM, None, None, torch.nn.LeakyReLU,
                               {"inplace": True}, deep_supervision=False)


def meta_for(net, **extra):
    return {"encoder_family": "cnn", "key_to_encoder": "encoder", "encoder_key_prefixes": [""],
            "keys_to_in_proj": [k[len("encoder."):] for k in net.keys_to_in_proj], "num_input_channels": 1, **extra}


def test_round_trip_preserves_meta_and_tensors(tmp_path):
    net = resenc()
    path = str(tmp_path / "voco_encoder.pth")
    save_encoder(path, net.encoder.state_dict(), meta_for(net, spacing=(1.0, 2.0, 3.0), steps=5))
    state, meta = load_encoder(path)
    assert meta["spacing"] == [1.0, 2.0, 3.0] and meta["steps"] == 5 and meta["schema_version"] == checkpoint.SCHEMA_VERSION
    for k, v in net.encoder.state_dict().items():
        torch.testing.assert_close(state[k], v)
    torch.load(path, weights_only=True)  # plain types only


def test_other_schema_version_names_both_versions(tmp_path):
    path = str(tmp_path / "old.pth")
    torch.save({"encoder": {}, "meta": {"format": checkpoint.ENCODER_FORMAT, "schema_version": 0}}, path)
    with pytest.raises(CheckpointError, match=r"schema version 0.*version 1"):
        load_encoder(path)


def test_truncated_file_is_a_one_line_error(tmp_path):
    net = resenc()
    path = str(tmp_path / "voco_encoder.pth")
    save_encoder(path, net.encoder.state_dict(), meta_for(net))
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(CheckpointError, match="truncated, corrupt") as err:
        load_encoder(path)
    assert "\n" not in str(err.value)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/nnunet_voco_pwned",))


def test_pickled_code_is_refused(tmp_path):
    path = str(tmp_path / "evil.pth")
    torch.save({"encoder": {}, "meta": {"x": _Payload()}}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_encoder(path)
    assert not os.path.exists("/tmp/nnunet_voco_pwned")


def test_full_transfer_counts_and_leaves_decoder_alone():
    src, dst = resenc(), resenc()
    dec_before = {k: v.clone() for k, v in dst.decoder.state_dict().items() if not k.startswith("encoder.")}
    report = transfer_encoder(dst, src.encoder.state_dict(), meta_for(src))
    assert report.complete and len(report.loaded) == report.expected == len(src.encoder.state_dict())
    for k, v in src.encoder.state_dict().items():
        torch.testing.assert_close(dst.encoder.state_dict()[k], v)
        torch.testing.assert_close(dst.state_dict()["decoder.encoder." + k], v)  # alias stays consistent
    for k, v in dst.decoder.state_dict().items():
        if not k.startswith("encoder."):
            torch.testing.assert_close(v, dec_before[k])


def test_other_architecture_fails_naming_key_and_shapes():
    src, dst = resenc(features=(4, 8, 16)), resenc(features=(4, 8, 32))
    with pytest.raises(RuntimeError, match=r"shape mismatch.*checkpoint \(16, 8.*network \(32, 8"):
        transfer_encoder(dst, src.encoder.state_dict(), meta_for(src))
    plain = PlainConvUNet(1, 3, (4, 8, 16), torch.nn.Conv3d, 3, (1, 2, 2), 2, 3, (1, 1), True, torch.nn.InstanceNorm3d,
                          NORM, None, None, torch.nn.LeakyReLU, {"inplace": True})
    with pytest.raises(RuntimeError, match="missing"):
        transfer_encoder(plain, src.encoder.state_dict(), meta_for(src))
    report = transfer_encoder(dst, src.encoder.state_dict(), meta_for(src), allow_partial=True)
    assert 0 < len(report.loaded) < report.expected and report.mismatched


def test_input_channels_are_adapted_with_the_documented_rule():
    src, dst = resenc(in_ch=1), resenc(in_ch=3)
    report = transfer_encoder(dst, src.encoder.state_dict(), meta_for(src))
    assert report.complete
    assert sorted(report.adapted) == ["stem.convs.0.all_modules.0.weight", "stem.convs.0.conv.weight"]
    w = src.encoder.state_dict()["stem.convs.0.conv.weight"]
    torch.testing.assert_close(dst.encoder.stem.convs[0].conv.weight, w.expand(-1, 3, -1, -1, -1) / 3)
    x = torch.randn(1, 1, 8, 8, 8)  # same image in every channel -> same first-layer response
    torch.testing.assert_close(dst.encoder.stem.convs[0].conv(x.expand(-1, 3, -1, -1, -1)),
                               src.encoder.stem.convs[0].conv(x), atol=1e-5, rtol=1e-5)
    assert adapt_input_channels(torch.ones(2, 3, 1, 1, 1), 1).shape == (2, 1, 1, 1, 1)
