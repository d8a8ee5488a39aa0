"""SwinUNETR-v2 for VoCo: the pre-training encoder and the nnU-Net downstream network.

Both are built around the same MONAI ``SwinUNETR(use_v2=True, spatial_dims=3)``, held as the
attribute ``swin``, so the encoder keys (``swin.swinViT.*``, ``swin.encoder1.*`` ...) are identical
in the pre-training encoder and in the downstream network, and identical (after the ``swin.``
submodule) to the layout of the official VoCo releases (VOCO_SPEC.md section 4.1).

VoCo embedding (official code, VOCO_SPEC.md section 1.4): with ``hs = swinViT(x)`` the pooled maps
are ``encoder1(x)`` [F, /1], ``encoder2(hs0)`` [F, /2], ``encoder3(hs1)`` [2F, /4],
``encoder4(hs2)`` [4F, /8] and ``encoder10(hs4)`` [16F, /32]; ``hs3`` (8F, /16) is not used.
The embedding has 24F channels (1152 for Swin-B).

Axes: nnU-Net feeds ``(B, C, X, Y, Z)`` arrays (coarse axis usually first). SwinUNETR accepts any
spatial size that is a multiple of 32 on every axis (patch 2, four merges) and pads internally to
its 7^3 windows, so the arrays are used as they are: no permutation and no resizing (the official
nnU-Net Swin trainer permutes and resizes the input; we instead make nnU-Net's patch size a
multiple of 32, see :func:`swin_patch_size`).
"""
from __future__ import annotations

import torch
from torch import nn

from nnunet_voco.encoders.bundle import EncoderBundle

SWIN_SIZES = {"swin_b": 48, "swin_l": 96, "swin_h": 192}
SWIN_DIVISOR = 32  # patch embedding 2 x four patch merges of 2
SWIN_KEY_TO_ENCODER = "swin"
SWIN_ENCODER_PREFIXES = ["swinViT.", "encoder1.", "encoder2.", "encoder3.", "encoder4.", "encoder10."]
# Modules of SwinUNETR that take the image itself; their weights have the input channels in dim 1.
# encoder1.layer.conv3 is the 1x1x1 residual projection of UnetResBlock; it exists because the
# number of input channels differs from F (true for every practical case, C < F).
SWIN_IN_PROJ_KEYS = ["swinViT.patch_embed.proj", "encoder1.layer.conv1.conv", "encoder1.layer.conv3.conv"]
# Submodules of SwinUNETR that VoCo never runs (decoder and segmentation head).
SWIN_DECODER_MODULES = ("decoder5", "decoder4", "decoder3", "decoder2", "decoder1", "out")
SWIN_CLASS = "monai.networks.nets.SwinUNETR"


def _check_feature_size(feature_size: int) -> int:
    feature_size = int(feature_size)
    # The four stages use 3, 6, 12, 24 heads on F, 2F, 4F, 8F channels: F must be divisible by 12.
    if feature_size < 12 or feature_size % 12:
        raise ValueError(
            f"Swin feature size must be a positive multiple of 12 (48 = swin_b, 96 = swin_l, "
            f"192 = swin_h), got {feature_size}"
        )
    return feature_size


def _make_swinunetr(in_channels: int, out_channels: int, feature_size: int, gradient_checkpointing: bool) -> nn.Module:
    from monai.networks.nets import SwinUNETR

    return SwinUNETR(
        in_channels=int(in_channels),
        out_channels=int(out_channels),
        feature_size=_check_feature_size(feature_size),
        use_checkpoint=bool(gradient_checkpointing),
        spatial_dims=3,
        use_v2=True,
    )


def check_swin_input_size(spatial_shape: tuple[int, ...]) -> None:
    """Raise ``ValueError`` unless every spatial size is a positive multiple of 32.

    Args:
        spatial_shape: ``(X, Y, Z)`` of the input.

    Raises:
        ValueError: names the first offending axis, its size and the nearest valid size.
    """
    for axis, size in enumerate(spatial_shape):
        if size < SWIN_DIVISOR or size % SWIN_DIVISOR:
            nearest = _nearest_multiple(size)
            raise ValueError(
                f"SwinUNETR needs spatial sizes that are multiples of {SWIN_DIVISOR}; array axis "
                f"{axis} has {size} (shape {tuple(spatial_shape)}), the "
                f"nearest valid size is {nearest}; use a patch size from swin_patch_size()"
            )
    if all(size == SWIN_DIVISOR for size in spatial_shape):
        raise ValueError(
            f"SwinUNETR input {tuple(spatial_shape)} leaves a 1-voxel bottleneck, which instance "
            f"normalisation cannot train on; use at least 64 on one axis (swin_patch_size() does)"
        )


def _nearest_multiple(size: int) -> int:
    # Nearest multiple of 32, ties rounded down (keeps memory at or below the plans' budget), >= 32.
    lower = (int(size) // SWIN_DIVISOR) * SWIN_DIVISOR
    upper = lower + SWIN_DIVISOR
    nearest = upper if (size - lower) > (upper - size) else lower
    return max(SWIN_DIVISOR, nearest)


def swin_patch_size(patch_size: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """The nnU-Net patch size made valid for SwinUNETR.

    Each axis is rounded to the nearest multiple of 32 (ties down, at least 32): the result stays
    close to the patch nnU-Net planned for its GPU-memory target, and rounding is preferred over the
    official nnU-Net Swin wrapper's trilinear resizing of every patch, which changes the spacing the
    network sees. A result of (32, 32, 32) would leave a 1-voxel bottleneck that instance
    normalisation cannot train on, so the largest axis is then raised to 64.
    Examples: (40, 224, 192) -> (32, 224, 192); (80, 160, 112) -> (64, 160, 96);
    (20, 40, 36) -> (32, 64, 32).

    Args:
        patch_size: the configuration's patch size ``(X, Y, Z)``.

    Returns:
        The adjusted patch size, same length.
    """
    rounded = [_nearest_multiple(int(s)) for s in patch_size]
    if all(r == SWIN_DIVISOR for r in rounded):
        rounded[max(range(len(rounded)), key=lambda axis: patch_size[axis])] = 2 * SWIN_DIVISOR
    return tuple(rounded)


class _NoDeepSupervision:
    """``network.decoder`` stand-in for nnU-Net's deep-supervision switch.

    SwinUNETR has one output resolution; nnU-Net's ``set_deep_supervision_enabled`` sets
    ``network.decoder.deep_supervision``. Setting it to False is accepted, setting it to True
    raises, because the loss would then expect one output per decoder level.
    """

    @property
    def deep_supervision(self) -> bool:
        return False

    @deep_supervision.setter
    def deep_supervision(self, enabled: bool) -> None:
        if enabled:
            raise ValueError(
                "SwinUNETR has no deep supervision; set trainer.enable_deep_supervision = False "
                "(nnUNetTrainerVoCoSwin does)"
            )


class SwinUNETRNet(nn.Module):
    """nnU-Net downstream network: MONAI SwinUNETR-v2, input ``(B, C, X, Y, Z)``, no permutation.

    Args:
        input_channels: image channels C.
        num_classes: segmentation outputs (nnU-Net's ``num_segmentation_heads``).
        feature_size: F (48 = Swin-B, 96 = L, 192 = H; any multiple of 12).
        gradient_checkpointing: checkpoint the Swin blocks (less memory, ~30% slower).

    Shapes:
        ``(B, C, X, Y, Z) -> (B, num_classes, X, Y, Z)``, X, Y, Z multiples of 32.
    """

    def __init__(self, input_channels: int, num_classes: int, feature_size: int = 48,
                 gradient_checkpointing: bool = False) -> None:
        super().__init__()
        self.swin = _make_swinunetr(input_channels, num_classes, feature_size, gradient_checkpointing)
        self.decoder = _NoDeepSupervision()
        self.architecture = {
            "class": SWIN_CLASS, "feature_size": int(feature_size), "use_v2": True,
            "in_channels": int(input_channels), "out_channels": int(num_classes),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_swin_input_size(tuple(x.shape[2:]))
        return self.swin(x)


def build_swin_network(num_input_channels: int, num_classes: int, feature_size: int = 48,
                       gradient_checkpointing: bool = False) -> SwinUNETRNet:
    """Build the downstream :class:`SwinUNETRNet` (MONAI's own initialisation)."""
    return SwinUNETRNet(num_input_channels, num_classes, feature_size, gradient_checkpointing)


class SwinVoCoEncoder(nn.Module):
    """The SwinUNETR encoder path that VoCo pools; the decoder is removed.

    ``self.swin`` is a SwinUNETR built exactly like :class:`SwinUNETRNet`'s, minus
    :data:`SWIN_DECODER_MODULES` (they would never receive gradients, and DDP rejects unused
    parameters), so its state dict is the encoder part of the downstream ``swin`` submodule.

    Shapes:
        ``(N, C, X, Y, Z) -> [(N, F, X, Y, Z), (N, F, X/2..), (N, 2F, X/4..), (N, 4F, X/8..),
        (N, 16F, X/32..)]``.
    """

    def __init__(self, input_channels: int, feature_size: int = 48, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        self.swin = _make_swinunetr(input_channels, 1, feature_size, gradient_checkpointing)
        for name in SWIN_DECODER_MODULES:
            delattr(self.swin, name)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_swin_input_size(tuple(x.shape[2:]))
        swin = self.swin
        hidden = swin.swinViT(x, swin.normalize)
        return [
            swin.encoder1(x),
            swin.encoder2(hidden[0]),
            swin.encoder3(hidden[1]),
            swin.encoder4(hidden[2]),
            swin.encoder10(hidden[4]),  # hidden[3] (8F, /16) is not pooled, as in the official code
        ]


def swin_stage_channels(feature_size: int) -> list[int]:
    """Channels of the five pooled maps: ``[F, F, 2F, 4F, 16F]`` (sum 24F)."""
    f = int(feature_size)
    return [f, f, 2 * f, 4 * f, 16 * f]


def swin_meta(input_channels: int, feature_size: int) -> dict:
    """Plain-typed encoder metadata for ``voco_encoder.pth`` (see :class:`EncoderBundle`)."""
    return {
        "encoder_family": "swin",
        "architecture": {"class": SWIN_CLASS, "feature_size": int(feature_size), "use_v2": True,
                         "in_channels": int(input_channels)},
        "key_to_encoder": SWIN_KEY_TO_ENCODER,
        "encoder_key_prefixes": list(SWIN_ENCODER_PREFIXES),
        "keys_to_in_proj": list(SWIN_IN_PROJ_KEYS),
    }


def build_swin_encoder(num_input_channels: int, feature_size: int = 48,
                       gradient_checkpointing: bool = False) -> EncoderBundle:
    """The VoCo Swin encoder as an :class:`EncoderBundle`.

    Args:
        num_input_channels: image channels C.
        feature_size: F (see :data:`SWIN_SIZES`; any multiple of 12).
        gradient_checkpointing: checkpoint the Swin blocks.

    Returns:
        The bundle; ``state_fn()`` returns the state dict with keys relative to the downstream
        network's ``swin`` submodule (``swinViT.*``, ``encoder1.*`` ... ``encoder10.*``).
    """
    module = SwinVoCoEncoder(num_input_channels, feature_size, gradient_checkpointing)

    def state_fn() -> dict:
        return {k: v.detach() for k, v in module.swin.state_dict().items()}

    return EncoderBundle(
        module=module,
        stage_channels=swin_stage_channels(feature_size),
        divisor=(SWIN_DIVISOR,) * 3,
        meta=swin_meta(num_input_channels, feature_size),
        state_fn=state_fn,  # crops: the shared stride and deepest-map rules of EncoderBundle.validate_crop
    )
