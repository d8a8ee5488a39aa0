"""Faithful synthetic stand-ins for the published checkpoints (ECOSYSTEM_WEIGHTS.md 6.2); no real file is reachable here.

Every network is the real dynamic-network-architectures class with the exact kwargs of the release
(nnssl's ResEncL) or a small generic one, and every parameter is randomised, norm affines included
(``randn * 0.05 + 0.3``): with nnU-Net's 1/0 defaults an "it was copied" check would pass vacuously.
On the meta device the networks cost nothing and serve the key/shape tests; on CPU they serve value tests.
"""
from __future__ import annotations

import copy
import json
import os

import numpy as np
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

NORM = {"eps": 1e-5, "affine": True}
RESENCL = dict(n_stages=6, features_per_stage=[32, 64, 128, 256, 320, 320], kernel_sizes=[[3, 3, 3]] * 6,
               strides=[[1, 1, 1]] + [[2, 2, 2]] * 5, n_blocks_per_stage=[1, 3, 4, 6, 6, 6],
               n_conv_per_stage_decoder=[1] * 5)
# A small ResEnc with the same layout (3 stages), for value tests on CPU and the toy chains.
SMALL = dict(n_stages=3, features_per_stage=[8, 16, 32], kernel_sizes=[[3, 3, 3]] * 3,
             strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]], n_blocks_per_stage=[1, 2, 2], n_conv_per_stage_decoder=[1, 1])


def dotted(kwargs: dict) -> dict:
    """nnU-Net / nnssl plan form of ResEnc kwargs (class names as dotted strings)."""
    return {**copy.deepcopy(kwargs), "conv_op": "torch.nn.modules.conv.Conv3d", "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": dict(NORM),
            "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True}}


def resenc(kwargs=RESENCL, in_channels: int = 1, num_classes: int = 1, device="meta", seed: int = 0):
    with torch.device(device):
        net = ResidualEncoderUNet(in_channels, num_classes=num_classes, conv_op=nn.Conv3d, conv_bias=True,
                                  norm_op=nn.InstanceNorm3d, norm_op_kwargs=dict(NORM), nonlin=nn.LeakyReLU,
                                  nonlin_kwargs={"inplace": True}, **kwargs)
    return randomise(net, seed)


def plain(n_stages=6, features=(32, 64, 128, 256, 320, 320), in_channels=1, num_classes=21, device="meta", seed=0,
          kernels=None, convs=2):
    with torch.device(device):
        net = PlainConvUNet(in_channels, n_stages, list(features), nn.Conv3d, kernels or [[3, 3, 3]] * n_stages,
                            [[1, 1, 1]] + [[2, 2, 2]] * (n_stages - 1), [convs] * n_stages, num_classes,
                            [convs] * (n_stages - 1), conv_bias=True, norm_op=nn.InstanceNorm3d,
                            norm_op_kwargs=dict(NORM), nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True})
    return randomise(net, seed)


@torch.no_grad()
def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter ``randn * 0.05 + 0.3`` (real devices only; meta tensors have no values)."""
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        if p.device.type != "meta":
            p.copy_(torch.randn(p.shape, generator=g) * 0.05 + 0.3)
    return module


def projector(in_dim=1120, hidden=2048, device="meta", seed=1):
    with torch.device(device):
        head = nn.ModuleDict({"layer1": nn.Sequential(nn.Linear(in_dim, hidden), nn.InstanceNorm1d(hidden), nn.ReLU()),
                              "layer2": nn.Sequential(nn.Linear(hidden, hidden), nn.InstanceNorm1d(hidden), nn.ReLU()),
                              "layer3": nn.Sequential(nn.Linear(hidden, hidden))})
    return randomise(head, seed)


def nnssl_plan(arch_class="ResEncL", kwargs=None, spacing=(1, 1, 1), patch=(64, 64, 64), channels=1,
               key_to_encoder="encoder.stages", key_to_stem="encoder.stem",
               in_proj=("encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0"), key_to_lpe=None) -> dict:
    """nnssl's adaptation plan, every field (ECOSYSTEM_WEIGHTS.md 1.4); ``keys_to_in_proj`` a tuple as in the .pth."""
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    return {
        "architecture_plans": {"arch_class_name": arch_class, "arch_kwargs": kwargs,
                               "arch_kwargs_requiring_import": ["conv_op", "norm_op", "nonlin"] if kwargs else None},
        "pretrain_plan": {
            "dataset_name": "Dataset745_OpenNeuro_v2", "plans_name": "nnsslPlans",
            "original_median_spacing_after_transp": list(spacing), "image_reader_writer": "SimpleITKIO",
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "configurations": {"onemmiso": {
                "data_identifier": "nnsslPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
                "spacing_style": "onemmiso", "normalization_schemes": ["ZScoreNormalization"] * channels,
                "use_mask_for_norm": [False] * channels, "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": resampling, "resampling_fn_mask": "resample_data_or_seg_to_shape",
                "resampling_fn_mask_kwargs": {**resampling, "is_seg": True, "order": 1},
                "spacing": list(spacing), "patch_size": list(patch)}},
            "experiment_planner_used": "FixedResEncUNetPlanner"},
        "pretrain_num_input_channels": channels, "recommended_downstream_patchsize": [160, 160, 160],
        "key_to_encoder": key_to_encoder, "key_to_stem": key_to_stem, "keys_to_in_proj": tuple(in_proj),
        "key_to_lpe": key_to_lpe,
    }


def voco_weights(net, head=None) -> dict:
    """nnssl VoCo layout: ``encoder.*`` (aliases included) + ``projector.layer{1,2,3}.0.*`` (454 keys for ResEncL)."""
    out = {"encoder." + k: v for k, v in net.encoder.state_dict().items()}
    if head is not None:
        out.update({"projector." + k: v for k, v in head.state_dict().items()})
    return out


def nnssl_checkpoint(variant: str = "release", device="meta", kwargs=None, seed: int = 0) -> dict:
    """An nnssl checkpoint of ``variant`` (ECOSYSTEM_WEIGHTS.md 6.2 step 3): release, training, spark, numpy,
    primus, citations, tensor_plan, mae; ``kwargs`` (a small ResEnc) switches to the generic plan form."""
    small = kwargs is not None
    net = resenc(kwargs or RESENCL, device=device, seed=seed)
    embed = sum((kwargs or RESENCL)["features_per_stage"])
    plan = nnssl_plan("ResidualEncoderUNet", dotted(kwargs)) if small else nnssl_plan()
    weights = dict(net.state_dict()) if variant == "mae" else voco_weights(net, projector(embed, 2048 if not small
                                                                                       else 64, device, seed + 1))
    init_args = {"plan": {"dataset_name": "Dataset745_OpenNeuro_v2"}, "configuration_name": "onemmiso", "fold": "all",
                 "pretrain_json": {}, "device": torch.device("cuda")}
    ckpt = {"network_weights": weights, "init_args": init_args,
            "trainer_name": "BaseMAETrainer" if variant == "mae" else "VoCoTrainer", "nnssl_adaptation_plan": plan}
    if variant in ("training", "numpy"):
        ckpt.update(optimizer_state={"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": []},
                    grad_scaler_state=None, _best_ema=0.5, current_epoch=7,
                    logging={"train_losses": [0.9, 0.8], "val_losses": [1.0], "lrs": [1e-2]})
    if variant == "numpy":
        ckpt["logging"]["train_losses"] = [np.float64(0.9)]
        ckpt["_best_ema"] = np.float64(0.5)
    if variant == "spark":
        del ckpt["nnssl_adaptation_plan"]
        ckpt.update(trainer_name="SparkTrainer5ep", spark_weights={"mask_token": torch.zeros(1, 8)})
    if variant == "primus":
        ckpt["nnssl_adaptation_plan"] = nnssl_plan("PrimusM", key_to_encoder="eva", key_to_stem="down_projection",
                                                   in_proj=("down_projection.proj",), key_to_lpe="eva.pos_embed")
        ckpt["network_weights"] = {"eva.pos_embed": torch.zeros(1, 8, 4), "down_projection.proj.weight": torch.zeros(4, 1, 8, 8, 8)}
    if variant == "citations":
        ckpt["citations"] = [{"type": "pre-training", "name": "Synthetic", "apa_citations": ["Doe, J. (2026). A test."]}]
    if variant == "tensor_plan":  # nnssl's _convert_numpy turns arrays into tensors
        config = ckpt["nnssl_adaptation_plan"]["pretrain_plan"]["configurations"]["onemmiso"]
        config["spacing"], config["patch_size"] = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([64, 64, 64])
    return ckpt


def write_hf_folder(folder: str, ckpt: dict, embed_plan: bool = True) -> str:
    """Hugging Face layout: checkpoint_final.pth, adaptation_plan.json (plan + trainer_name), config.json."""
    os.makedirs(folder, exist_ok=True)
    plan = ckpt["nnssl_adaptation_plan"]
    body = dict(ckpt) if embed_plan else {k: v for k, v in ckpt.items() if k != "nnssl_adaptation_plan"}
    torch.save(body, os.path.join(folder, "checkpoint_final.pth"))
    with open(os.path.join(folder, "adaptation_plan.json"), "w") as f:
        json.dump({**plan, "keys_to_in_proj": list(plan["keys_to_in_proj"]), "trainer_name": ckpt["trainer_name"]}, f)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({}, f)
    return folder


def nnunet_checkpoint(net, plans: dict, configuration: str = "3d_fullres", channels=("CT",)) -> dict:
    """nnU-Net 2.8.1's checkpoint layout, with the numpy floats its log holds."""
    return {"network_weights": net.state_dict(),
            "optimizer_state": {"state": {}, "param_groups": [{"lr": 0.01, "params": [0]}]},
            "grad_scaler_state": None,
            "logging": {"mean_fg_dice": [np.float64(0.5)], "ema_fg_dice": [np.float64(0.5)], "train_losses": [0.3]},
            "_best_ema": np.float64(0.5), "current_epoch": 1000,
            "init_args": {"plans": plans, "configuration": configuration, "fold": 0,
                          "dataset_json": {"channel_names": {str(i): c for i, c in enumerate(channels)},
                                           "labels": {"background": 0, "organ": 1}},
                          "device": torch.device("cuda")},
            "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": (0, 1, 2)}


def nnunet_plans(kwargs: dict, network: str = "ResidualEncoderUNet", spacing=(1.0, 1.0, 1.0), patch=(64, 64, 64),
                 two_d: bool = False) -> dict:
    arch = {"network_class_name": f"dynamic_network_architectures.architectures.unet.{network}",
            "arch_kwargs": dotted(kwargs) if network == "ResidualEncoderUNet" else kwargs,
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    config = {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
              "patch_size": list(patch), "median_image_size_in_voxels": [128, 128, 128], "spacing": list(spacing),
              "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False], "architecture": arch}
    name = "2d" if two_d else "3d_fullres"
    if two_d:
        config["patch_size"], config["spacing"] = list(patch)[:2], list(spacing)[:2]
    return {"dataset_name": "Dataset123_OtherTask", "plans_name": "nnUNetResEncUNetLPlans",
            "configurations": {name: config, "3d_cascade_fullres": {"inherits_from": name}}}
