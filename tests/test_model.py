"""Heads, the VoCo model on a tiny CNN encoder, sampling and augmentation."""
import numpy as np
import pytest
import torch
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

from nnunet_voco.voco.augment import AugmentConfig, augment_crops
from nnunet_voco.encoders.bundle import EncoderBundle
from nnunet_voco.voco.heads import ProjectionHead, pool_stage_features
from nnunet_voco.voco.loss import VoCoLoss
from nnunet_voco.voco.model import VoCoModel
from nnunet_voco.voco.sampling import CropLayout, cut_crops, read_window, window_origin


def tiny_resenc() -> ResidualEncoderUNet:
    return ResidualEncoderUNet(1, 3, (4, 8, 16), torch.nn.Conv3d, 3, (1, 2, 2), (1, 1, 1), 2, (1, 1), True,
                               torch.nn.InstanceNorm3d, {"eps": 1e-5, "affine": True}, None, None, torch.nn.LeakyReLU,
                               {"inplace": True}, deep_supervision=False)


def tiny_bundle() -> EncoderBundle:
    net = tiny_resenc()
    return EncoderBundle(net.encoder, [4, 8, 16], (4, 4, 4), {"encoder_family": "cnn"}, net.encoder.state_dict)


def test_pool_stage_features_concatenates_means():
    maps = [torch.ones(2, 3, 4, 4, 4), 2 * torch.ones(2, 5, 2, 2, 2)]
    out = pool_stage_features(maps)
    assert out.shape == (2, 8)
    assert out[:, :3].eq(1).all() and out[:, 3:].eq(2).all()


def test_projection_head_uses_batch_statistics_in_eval():
    head = ProjectionHead(6, 16, 8).eval()
    x = torch.randn(5, 6)
    torch.testing.assert_close(head(x), head.train()(x))
    assert not any(isinstance(b, torch.Tensor) and b.numel() > 1 for b in head.buffers())


@pytest.mark.parametrize("preset", ["v2", "v1"])
def test_model_step_trains_student_only(preset):
    torch.manual_seed(0)
    model = VoCoModel(tiny_bundle(), preset, VoCoLoss(preset), head_dim=32, embedding_dropout=0.2)
    targets, bases = torch.randn(2, 2, 1, 8, 8, 8), torch.randn(2, 4, 1, 8, 8, 8)
    overlaps = torch.softmax(torch.randn(2, 2, 4), -1)
    out = model(targets, bases, overlaps)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert all(p.grad is None for p in model.teacher_projector.parameters())
    assert model.projector[0].weight.grad is not None
    assert (model.teacher_encoder is not None) == (preset == "v1")
    before = model.teacher_projector[0].weight.detach().clone()
    model.update_teacher(0.5)
    torch.testing.assert_close(model.teacher_projector[0].weight, 0.5 * before + 0.5 * model.projector[0].weight.detach())


def test_read_window_pads_small_cases_with_the_minimum():
    data = np.arange(2 * 4 * 4 * 4, dtype=np.float32).reshape(2, 4, 4, 4)
    out = read_window(data, np.array([-2, 0, 1]), (6, 4, 4))
    assert out.shape == (2, 6, 4, 4)
    np.testing.assert_array_equal(out[:, 2:, :, :3], data[:, :, :, 1:])
    assert (out[0, :2] == data[0, :, :, 1:].min()).all() and (out[1, :, :, 3] == data[1, :, :, 1:].min()).all()


def test_window_origin_stays_in_range_and_prefers_foreground():
    rng = np.random.default_rng(0)
    props = {"class_locations": {1: np.array([[0, 90, 90, 5]])}}
    origins = np.array([window_origin((100, 100, 10), (20, 20, 20), props, 1.0, rng) for _ in range(50)])
    assert (origins[:, :2] >= 0).all() and (origins[:, :2] <= 80).all() and ((origins[:, 2] >= -10) & (origins[:, 2] <= 0)).all()
    assert origins[:, 0].mean() > 65  # centred near x = 90


def test_cut_crops_bases_match_grid_cells():
    layout = CropLayout((2, 3, 4), (2, 2, 1), 1)
    window = np.random.default_rng(0).random((1, 4, 6, 4)).astype(np.float32)
    bases, targets = cut_crops(window, layout, np.array([[1, 2, 0]]))
    np.testing.assert_array_equal(bases[2], window[:, 2:4, 0:3, 0:4])
    np.testing.assert_array_equal(targets[0], window[:, 1:3, 2:5, 0:4])


def test_augmentation_keeps_shape_and_content_statistics():
    crops = torch.randn(64, 1, 6, 6, 6)
    cfg = AugmentConfig(flip_prob=0.5, rot90_prob=0.5, shift_prob=0.0)
    out = augment_crops(crops, cfg, torch.Generator().manual_seed(0))
    assert out.shape == crops.shape
    torch.testing.assert_close(out.flatten(1).sort(1).values, crops.flatten(1).sort(1).values)
    assert not torch.equal(out, crops)
    same = augment_crops(crops, AugmentConfig(0, 0, 0, 0, 0, 0), torch.Generator().manual_seed(0))
    torch.testing.assert_close(same, crops)
