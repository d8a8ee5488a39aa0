"""The encoder architecture of a set of weights: declared by a plan, or read from the tensor shapes.

An architecture is held in nnU-Net's plans form (``{"network_class_name", "arch_kwargs",
"arch_kwargs_requires_import"}``, dotted class names), so that the fine-tuning trainers, ``voco_plan_like``
and the export all read one dict. Two families of dynamic-network-architectures are supported, the
two nnU-Net plans and nnssl use: ``ResidualEncoderUNet`` (stem + ``stages.S.blocks.B``) and
``PlainConvUNet`` (``stages.S.0.convs.K``).

What the tensors show (:func:`infer_architecture`): the number of stages, the width and kernel of each
stage, the blocks (ResEnc) or convolutions (plain) per stage, the input channels, conv bias and the
norm (affine instance norm, batch norm with running statistics, or none with parameters). What they
cannot show: strides (pooling carries no weights), the non-linearity and the decoder. Strides are then
taken by nnU-Net's convention (stage 0: 1; later stages: 2 on every axis whose kernel is 3, else 1) and
marked ``strides_inferred``; nnssl's fixed ``ResEncL`` (6 stages, 32-320 wide, blocks 1-3-4-6-6-6,
3^3 kernels, strides 1-2-2-2-2-2; nnssl ``architecture_registry.py``) is recognised by its shape and
needs no guess.
"""
from __future__ import annotations

import copy
import pydoc
import re
from collections import defaultdict
from typing import Mapping

import torch

from nnunet_voco.nnunet import UserInputError

RESENC = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
PLAIN = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
FAMILIES = {"ResidualEncoderUNet": RESENC, "PlainConvUNet": PLAIN}
REQUIRES_IMPORT = ["conv_op", "norm_op", "dropout_op", "nonlin"]
# Our encoder key space (the downstream network's ``encoder`` submodule): in-projection aliases per family.
IN_PROJ = {RESENC: ["stem.convs.0.conv", "stem.convs.0.all_modules.0"],
           PLAIN: ["stages.0.0.convs.0.conv", "stages.0.0.convs.0.all_modules.0"]}
RESENC_L = dict(n_stages=6, features_per_stage=[32, 64, 128, 256, 320, 320], kernel_sizes=[[3, 3, 3]] * 6,
                strides=[[1, 1, 1]] + [[2, 2, 2]] * 5, n_blocks_per_stage=[1, 3, 4, 6, 6, 6])
_RESENC_BLOCK = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.")
_PLAIN_CONV = re.compile(r"^stages\.(\d+)\.0\.convs\.(\d+)\.")


class ArchitectureError(UserInputError):
    """Weights whose encoder this project cannot rebuild (2-D, Primus, unknown layout)."""


def family_of(arch: Mapping) -> str:
    """The dotted class name of ``arch``'s network (short names such as ``ResEncL`` resolved)."""
    name = str(arch.get("network_class_name", ""))
    short = name.rsplit(".", 1)[-1]
    if short in FAMILIES:
        return FAMILIES[short]
    raise ArchitectureError(f"network class {name!r} is not a ResidualEncoderUNet or PlainConvUNet of "
                            f"dynamic-network-architectures; only those CNN encoders can be imported")


def short_name(arch: Mapping) -> str:
    return family_of(arch).rsplit(".", 1)[-1]


def make_architecture(family: str, n_stages: int, features: list, kernels: list, strides: list, blocks: list,
                      in_3d: bool = True, conv_bias: bool = True, norm: str = "torch.nn.InstanceNorm3d",
                      norm_kwargs: dict | None = None, decoder_convs: list | None = None) -> dict:
    """An architecture dict in nnU-Net's plans form (the 14 dynamic-network-architectures kwargs)."""
    resenc = family == RESENC
    kwargs = {
        "n_stages": int(n_stages), "features_per_stage": [int(f) for f in features],
        "conv_op": "torch.nn.modules.conv.Conv3d" if in_3d else "torch.nn.modules.conv.Conv2d",
        "kernel_sizes": [[int(k) for k in ks] for ks in kernels], "strides": [[int(s) for s in st] for st in strides],
        ("n_blocks_per_stage" if resenc else "n_conv_per_stage"): [int(b) for b in blocks],
        "n_conv_per_stage_decoder": decoder_convs or [1 if resenc else 2] * (int(n_stages) - 1),
        "conv_bias": bool(conv_bias), "norm_op": norm,
        "norm_op_kwargs": norm_kwargs if norm_kwargs is not None else {"eps": 1e-05, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
    }
    return {"network_class_name": family, "arch_kwargs": kwargs, "arch_kwargs_requires_import": list(REQUIRES_IMPORT)}


def resencl_architecture() -> dict:
    """nnssl's fixed ``ResEncL`` (nnssl architecture_registry.get_res_enc_l, ECOSYSTEM_WEIGHTS.md 1.5)."""
    r = copy.deepcopy(RESENC_L)
    return make_architecture(RESENC, r["n_stages"], r["features_per_stage"], r["kernel_sizes"], r["strides"],
                             r["n_blocks_per_stage"])


def blocks_of(arch: Mapping) -> list[int]:
    kwargs = arch["arch_kwargs"]
    return list(kwargs.get("n_blocks_per_stage") or kwargs.get("n_conv_per_stage"))


def is_resencl(arch: Mapping) -> bool:
    """Whether ``arch``'s encoder is nnssl's fixed ResEncL (strides and decoder aside)."""
    kwargs = arch["arch_kwargs"]
    return (family_of(arch) == RESENC and int(kwargs["n_stages"]) == 6
            and list(kwargs["features_per_stage"]) == RESENC_L["features_per_stage"]
            and [list(k) for k in kwargs["kernel_sizes"]] == RESENC_L["kernel_sizes"]
            and blocks_of(arch) == RESENC_L["n_blocks_per_stage"])


def infer_architecture(state: Mapping[str, torch.Tensor]) -> tuple[dict, bool]:
    """The architecture of encoder tensors in our key space (``stem.*``, ``stages.*``), from shapes alone.

    Returns:
        ``(architecture, strides_inferred)``; the strides are nnU-Net's convention unless the shapes are
        nnssl's ResEncL.

    Raises:
        ArchitectureError: 2-D kernels, bottleneck blocks, or no stage tensors (the message names the reason).
    """
    resenc = any(_RESENC_BLOCK.match(k) for k in state)
    pattern = _RESENC_BLOCK if resenc else _PLAIN_CONV
    units = defaultdict(set)
    for k in state:
        m = pattern.match(k)
        if m:
            units[int(m.group(1))].add(int(m.group(2)))
    if not units:
        raise ArchitectureError("no encoder stage tensors (stages.S.blocks.B.* or stages.S.0.convs.K.*) found; "
                                "this is not a dynamic-network-architectures CNN encoder")
    n_stages = max(units) + 1
    if sorted(units) != list(range(n_stages)):
        raise ArchitectureError(f"encoder stages {sorted(units)} are not contiguous; the file is incomplete")
    if resenc and any(k.endswith(".conv3.conv.weight") for k in state):
        raise ArchitectureError("bottleneck residual blocks (conv3) are not supported; use BasicBlockD encoders")
    first = [state[f"stages.{s}.blocks.0.conv1.conv.weight" if resenc else f"stages.{s}.0.convs.0.conv.weight"]
             for s in range(n_stages)]
    if first[0].dim() != 5:
        raise ArchitectureError(f"the encoder is {first[0].dim() - 2}-D (kernel {tuple(first[0].shape)}); only "
                                f"3-D encoders import, and no 3-D weights fit an nnU-Net 2d configuration")
    features = [int(w.shape[0]) for w in first]
    kernels = [[int(v) for v in w.shape[2:]] for w in first]
    blocks = [len(units[s]) for s in range(n_stages)]
    norm, norm_kwargs = _norm_of(state)
    strides = [[1, 1, 1]] + [[2 if k == 3 else 1 for k in ks] for ks in kernels[1:]]
    arch = make_architecture(RESENC if resenc else PLAIN, n_stages, features, kernels, strides, blocks,
                             conv_bias=any(k.endswith(".conv.bias") for k in state), norm=norm, norm_kwargs=norm_kwargs)
    if is_resencl(arch):  # nnssl's fixed network: its strides are known
        arch["arch_kwargs"]["strides"] = copy.deepcopy(RESENC_L["strides"])
        return arch, False
    return arch, True


def _norm_of(state) -> tuple[str | None, dict | None]:
    if any(k.endswith(".norm.running_mean") for k in state):
        return "torch.nn.BatchNorm3d", {"eps": 1e-05, "affine": any(k.endswith(".norm.weight") for k in state)}
    if any(k.endswith(".norm.weight") for k in state):
        return "torch.nn.InstanceNorm3d", {"eps": 1e-05, "affine": True}
    return "torch.nn.InstanceNorm3d", {"eps": 1e-05, "affine": False}


def input_channels(state: Mapping[str, torch.Tensor], arch: Mapping) -> int:
    """Input channels of the encoder's first convolution."""
    return int(state[IN_PROJ[family_of(arch)][0] + ".weight"].shape[1])


def _locate(name):
    if name is None or not isinstance(name, str):
        return name
    found = pydoc.locate(name) or pydoc.locate("torch.nn." + name.rsplit(".", 1)[-1])
    if found is None:
        raise ArchitectureError(f"cannot resolve {name!r} in the architecture kwargs")
    return found


def build_network(arch: Mapping, in_channels: int, num_classes: int = 2, device: str | torch.device = "meta"):
    """The full dynamic-network-architectures network of ``arch`` (deep supervision off), on ``device``.

    On the meta device it costs no memory and little time (ECOSYSTEM_WEIGHTS.md 6.2: 0.06 s for ResEncL),
    which is enough to compare key names and shapes.
    """
    cls = _locate(family_of(arch))
    kwargs = dict(arch["arch_kwargs"])
    for key in arch.get("arch_kwargs_requires_import") or REQUIRES_IMPORT:
        if key in kwargs:
            kwargs[key] = _locate(kwargs[key])
    if cls.__name__ == "PlainConvUNet":
        kwargs.pop("n_blocks_per_stage", None)
    with torch.device(device):
        return cls(int(in_channels), num_classes=int(num_classes), deep_supervision=False, **kwargs)


def build_encoder(arch: Mapping, in_channels: int, device: str | torch.device = "meta") -> torch.nn.Module:
    """The ``encoder`` submodule of :func:`build_network` (our encoder key space)."""
    return build_network(arch, in_channels, device=device).encoder


def describe(arch: Mapping, strides_inferred: bool = False) -> str:
    """One line: family, stages, widths, blocks, kernels, strides, norm."""
    k = arch["arch_kwargs"]
    kernels = "x".join("".join(str(v) for v in ks) for ks in k["kernel_sizes"])
    strides = "x".join("".join(str(v) for v in st) for st in k["strides"])
    norm = str(k.get("norm_op")).rsplit(".", 1)[-1]
    name = "ResEncL (nnssl)" if family_of(arch) == RESENC and is_resencl(arch) else short_name(arch)
    return (f"{name}: {k['n_stages']} stages, widths {list(k['features_per_stage'])}, "
            f"{'blocks' if family_of(arch) == RESENC else 'convs'} {blocks_of(arch)}, kernels {kernels}, strides "
            f"{strides}{' (inferred)' if strides_inferred else ''}, {norm}")
