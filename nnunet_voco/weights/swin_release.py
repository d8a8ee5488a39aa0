"""Convert released VoCo Swin checkpoints into nnunet-voco's ``voco_encoder.pth``.

Accepted files (VOCO_SPEC.md section 4.1; HF ``Luffy503/VoCo``):
    * SSL heads ``VoCo_{B,L,H}_SSL_head.pt``: the SwinUNETR-v2 encoder only, 145 tensors
      (``swinViT.*``, ``encoder1..4.*``, ``encoder10.*``).
    * VoComni ``VoComni_{B,L,H}.pt``: a full SwinUNETR-v2 (encoder, ``decoder1..5``, ``out`` with
      21 classes, 167 tensors); the 22 decoder/head tensors are skipped.
    * Training files: ``module.backbone.*`` with ``student.*`` / ``teacher.*`` heads (v2) or
      ``student.swinViT.*`` / ``teacher.*`` (v1); the student backbone is imported, the rest skipped.

Key handling follows the official loaders (VOCO_SPEC.md section 4.2): the state dict may sit under
``state_dict`` / ``network_weights`` / ``net`` / ``student``; ``module.`` and ``backbone.``
prefixes are stripped; the legacy ``swin_vit`` name becomes ``swinViT``. Unlike the official
loaders nothing is dropped silently: every tensor is either an encoder tensor that must load
strictly into a freshly built encoder, or a counted skip.

The official files carry no nnU-Net plans, so the plans fields of the metadata (plans identifier,
configuration, patch size, spacing, normalisation) are ``None`` and the fine-tuning trainer skips
its plans compatibility checks for these weights (``weights_lookup.check_compatibility`` checks CNN
plans only); the architecture checks (feature size, tensor shapes) still apply. Every file is read with ``weights_only=True``.
"""
from __future__ import annotations

import dataclasses
import os
from collections import Counter
from typing import Mapping

import torch

from nnunet_voco.artifacts import write_encoder
from nnunet_voco.checkpoint import adapt_input_channels, load_file, to_plain
from nnunet_voco.encoders.swin import (
    SWIN_DECODER_MODULES,
    SWIN_ENCODER_PREFIXES,
    SWIN_IN_PROJ_KEYS,
    build_swin_encoder,
    swin_meta,
)
from nnunet_voco.weights.encoder_state import strip_prefixes

CONTAINER_KEYS = ("state_dict", "network_weights", "net", "student")
STRIPPED_PREFIXES = ("module.", "backbone.")
PATCH_EMBED_KEY = "swinViT.patch_embed.proj.weight"
STUDENT_PREFIX = "student."
# Top-level names of VoCo training files that are not part of SwinUNETR: skipped and counted.
SSL_TRAINING_MODULES = ("student", "teacher")
# Buffers MONAI recomputes from the window size; filled from the fresh model if a file lacks them.
DERIVED_BUFFER_SUFFIX = "relative_position_index"


@dataclasses.dataclass
class ImportReport:
    """What :func:`convert_official` did."""

    encoder: dict[str, torch.Tensor]
    meta: dict
    skipped: dict[str, int]  # top-level module name -> number of tensors skipped
    filled: list[str]        # derived buffers taken from the fresh model
    adapted: list[str]       # in-proj keys adapted to another input-channel count

    def summary(self) -> str:
        """One line: imported and skipped tensor counts."""
        n_skipped = sum(self.skipped.values())
        label = "decoder/head" if set(self.skipped) <= set(SWIN_DECODER_MODULES) else "decoder/head/SSL-training"
        line = f"imported {len(self.encoder)} encoder tensors, skipped {n_skipped} {label} tensors"
        if self.skipped:
            line += f" ({', '.join(f'{k} {v}' for k, v in sorted(self.skipped.items()))})"
        if self.filled:
            line += f", filled {len(self.filled)} derived buffers ({DERIVED_BUFFER_SUFFIX})"
        if self.adapted:
            old, new = self.meta["architecture"]["source_in_channels"], self.meta["architecture"]["in_channels"]
            line += f", first conv adapted {old} -> {new} input channels ({len(self.adapted)} tensors)"
        return line


def is_swin_state(obj: Mapping) -> bool:
    """Whether a checkpoint's content is a VoCo / SwinUNETR file (any ``swinViT`` / ``swin_vit`` key inside)."""
    try:
        state = _unwrap_state(obj, "")
    except ValueError:
        return False
    return any("swinViT." in k or "swin_vit." in k for k in state)


def _unwrap_state(obj: Mapping, path: str) -> dict:
    """Descend into the official container keys until a flat name -> tensor mapping remains."""
    if "encoder" in obj and "meta" in obj:
        raise ValueError(f"{path} is already an nnunet-voco encoder file; use it directly")
    while True:
        inner = next((obj[k] for k in CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def normalise_key(key: str) -> str:
    """Official key -> SwinUNETR key: strip ``module.`` / ``backbone.``, rename ``swin_vit``."""
    key = strip_prefixes(key, STRIPPED_PREFIXES)
    if key.startswith("swin_vit."):
        key = "swinViT." + key[len("swin_vit."):]
    return key


def split_state(state: Mapping[str, torch.Tensor], path: str = "checkpoint") -> tuple[dict, dict[str, int]]:
    """Split normalised SwinUNETR keys into encoder tensors and per-module counts of skipped ones.

    Raises:
        ValueError: a key belongs neither to the encoder nor to the decoder/head modules.
    """
    encoder = {k: v for k, v in state.items() if k.startswith(tuple(SWIN_ENCODER_PREFIXES))}
    skipped = Counter(k.split(".")[0] for k in state if k not in encoder)
    unknown = sorted(set(skipped) - set(SWIN_DECODER_MODULES) - set(SSL_TRAINING_MODULES))
    if unknown:
        raise ValueError(f"{path} holds tensors outside SwinUNETR ({', '.join(unknown[:5])}); "
                         f"expected an SSL head or a full SwinUNETR-v2 file")
    return encoder, dict(skipped)


def convert_official(path: str, in_channels: int | None = None, feature_size: int | None = None,
                     raw: Mapping | None = None) -> ImportReport:
    """Read an official VoCo file and return the encoder tensors plus metadata.

    Args:
        path: the released file.
        in_channels: target input channels; when it differs from the file's, the in-proj kernels
            are adapted with :func:`nnunet_voco.checkpoint.adapt_input_channels`. None: keep.
        feature_size: expected F; None: inferred from ``swinViT.patch_embed.proj.weight``.
        raw: the file's content when the caller already read it (``voco_import_weights`` does).

    Returns:
        The :class:`ImportReport`.

    Raises:
        FileNotFoundError, RuntimeError: unreadable file or pickled objects (from ``load_file``).
        ValueError: not a Swin checkpoint, feature size mismatch, or tensors that do not fit.
    """
    raw = load_file(path) if raw is None else raw
    state = {normalise_key(k): v for k, v in _unwrap_state(raw, path).items()}
    if PATCH_EMBED_KEY not in state and STUDENT_PREFIX + PATCH_EMBED_KEY in state:
        # v1 training file: student.swinViT... / teacher.swinViT...: the student is the encoder
        state = {k[len(STUDENT_PREFIX):] if k.startswith(STUDENT_PREFIX) else k: v for k, v in state.items()}
    if PATCH_EMBED_KEY not in state:
        raise ValueError(f"{path} is not a VoCo Swin checkpoint: no {PATCH_EMBED_KEY} among {len(state)} tensors")
    weight = state[PATCH_EMBED_KEY]
    file_f, file_c = int(weight.shape[0]), int(weight.shape[1])
    if feature_size is not None and int(feature_size) != file_f:
        raise ValueError(f"{path} has feature size {file_f} (patch embedding {tuple(weight.shape)}), "
                         f"not the requested {feature_size}")
    encoder, skipped = split_state(state, path)
    target_c = file_c if in_channels is None else int(in_channels)
    adapted = []
    if target_c != file_c:
        for key in SWIN_IN_PROJ_KEYS:
            if key + ".weight" in encoder:
                encoder[key + ".weight"] = adapt_input_channels(encoder[key + ".weight"], target_c)
                adapted.append(key + ".weight")
    filled = _verify(encoder, target_c, file_f, path)
    meta = _official_meta(path, target_c, file_c, file_f)
    return ImportReport(encoder, meta, skipped, filled, adapted)


def _verify(encoder: dict[str, torch.Tensor], in_channels: int, feature_size: int, path: str) -> list[str]:
    """Load ``encoder`` strictly into a fresh Swin encoder; fill derived buffers; return them."""
    module = build_swin_encoder(in_channels, feature_size).module.swin
    reference = module.state_dict()
    filled = [k for k in reference if k not in encoder and k.endswith(DERIVED_BUFFER_SUFFIX)]
    for k in filled:
        encoder[k] = reference[k].clone()
    try:
        module.load_state_dict(encoder, strict=True)
    except RuntimeError as e:
        missing = [k for k in reference if k not in encoder]
        unexpected = [k for k in encoder if k not in reference]
        bad = [k for k in encoder if k in reference and encoder[k].shape != reference[k].shape]
        detail = "; ".join(
            f"{name} {len(keys)} (first: {keys[0]})"
            for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatches", bad)) if keys
        ) or str(e).splitlines()[0]
        raise ValueError(f"{path} does not fit SwinUNETR-v2 with feature size {feature_size}: {detail}") from None
    return filled


def _official_meta(path: str, in_channels: int, source_in_channels: int, feature_size: int) -> dict:
    meta = swin_meta(in_channels, feature_size)
    meta["architecture"]["source_in_channels"] = source_in_channels
    meta.update(
        source_file=os.path.abspath(path),
        pretrained_on="official VoCo release",
        preset="official",
        steps=None,
        num_input_channels=in_channels,
        # No nnU-Net plans exist for official files; plans compatibility checks are skipped.
        plans_name=None,
        configuration=None,
        dataset_name=None,
        datasets=None,
        patch_size=None,
        crop_size=None,
        spacing=None,
        normalization_schemes=None,
    )
    return to_plain(meta)


def import_official(path: str, output: str, in_channels: int | None = None,
                    feature_size: int | None = None) -> ImportReport:
    """Convert ``path``, write ``output`` (``voco_encoder.pth`` format) and its metadata as JSON
    next to it (``voco_encoder.json``, as ``voco_pretrain`` does, both with
    :func:`nnunet_voco.artifacts.write_encoder`); return the report."""
    report = convert_official(path, in_channels, feature_size)
    write_encoder(output, report.encoder, report.meta)
    return report
