"""What every format reader returns, and the key map from a full network's state dict into our encoder.

A reader (:mod:`.nnssl_format`, :mod:`.nnunet_format`, :mod:`.dna_format`) turns one file into a
:class:`SourceWeights`: the encoder tensors in our key space (``stem.*``, ``stages.*``), the heads we can
reuse (the VoCo projector), the declared architecture if the file has one, the recorded pre-training
facts and a :class:`~nnunet_voco.weights.encoder_state.Tally` of every tensor in the file.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Mapping

import torch

from nnunet_voco.weights.encoder_state import Tally

# nnssl's VoCo projector (voco_architecture.py: layer1/2/3, each Sequential(Linear, ...)) -> our
# ProjectionHead (nnunet_voco.voco.heads: Linear at 0, 3 and 6; its norms have no parameters either way).
NNSSL_PROJECTOR = {"layer1.0": "0", "layer2.0": "3", "layer3.0": "6"}


@dataclasses.dataclass
class SourceWeights:
    """One source file, read: see the module docstring."""

    format: str
    encoder: dict[str, torch.Tensor]
    architecture: dict | None  # declared by the file; None: read from the tensor shapes
    architecture_source: str
    heads: dict[str, dict[str, torch.Tensor]]
    tally: Tally
    facts: dict  # pretrain_dataset, spacing, spacing_style, normalization_schemes, patch_size, input_channels, ...
    citations: list
    trainer_name: str | None = None


def split_network_state(state: Mapping[str, torch.Tensor], key_to_encoder: str = "encoder.stages",
                        key_to_stem: str = "encoder.stem") -> tuple[dict, dict, Tally]:
    """Split a network's state dict (wrappers already stripped) into our encoder, heads and the rest.

    Keys under ``key_to_stem`` become ``stem.*`` and keys under ``key_to_encoder`` ``stages.*`` (a plain
    UNet's stem is stage 0 and lies inside the encoder prefix). nnssl's VoCo ``projector.*`` goes to the
    heads; the decoder (with its ``decoder.encoder.*`` alias of the encoder), the segmentation layers and
    anything else are counted as skipped.

    Returns:
        ``(encoder, heads, tally)``; the encoder's count is added by the caller once aliases are folded.
    """
    stem_inside = key_to_stem.startswith(key_to_encoder + ".") or key_to_stem == key_to_encoder
    encoder, projector, skipped = {}, {}, Counter()
    for key, value in state.items():
        if not stem_inside and key.startswith(key_to_stem + "."):
            encoder["stem." + key[len(key_to_stem) + 1:]] = value
        elif key.startswith(key_to_encoder + "."):
            encoder["stages." + key[len(key_to_encoder) + 1:]] = value
        elif key.startswith("projector."):
            rest = key[len("projector."):]
            module, _, leaf = rest.rpartition(".")
            if module in NNSSL_PROJECTOR:
                projector[f"{NNSSL_PROJECTOR[module]}.{leaf}"] = value
            else:
                skipped["projector (unknown layout)"] += 1
        elif key.startswith("decoder.encoder."):
            skipped["decoder's alias of the encoder"] += 1
        elif ".seg_layers." in key or key.startswith("seg_layers."):
            skipped["segmentation layers"] += 1
        elif key.startswith("decoder."):
            skipped["decoder"] += 1
        else:
            skipped[key.split(".")[0]] += 1
    tally = Tally()
    if projector:
        tally.add("VoCo projector", len(projector), "kept for voco_pretrain --init")
    for group, n in skipped.items():
        tally.add(group, n, "skipped")
    return encoder, ({"projector": projector} if projector else {}), tally


def first_configuration(plan: Mapping) -> tuple[str | None, dict]:
    """``(name, configuration)`` of the first configuration of an nnssl ``pretrain_plan`` (master reads the first)."""
    configurations = (plan or {}).get("configurations") or {}
    for name, config in configurations.items():
        return name, dict(config or {})
    return None, {}
