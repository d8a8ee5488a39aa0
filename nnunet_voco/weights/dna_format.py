"""Bare dynamic-network-architectures state dicts, and Luffy03's ``VoComni_nnunet.pt`` (ECOSYSTEM_WEIGHTS.md 6.1 A.5-A.6).

A bare file is ``network.state_dict()`` of a ``ResidualEncoderUNet`` / ``PlainConvUNet`` (keys
``encoder.*``, ``decoder.*``) or of its encoder alone (``stem.*``, ``stages.*``), possibly under a
``state_dict`` / ``network_weights`` / ``net`` / ``student`` / ``model`` container and with DDP
(``module.``), ``torch.compile`` (``_orig_mod.``) or ``backbone.`` prefixes. Such a file records no plan:
the architecture is read from the tensor shapes.

``VoComni_nnunet.pt`` is this layout: a 6-stage PlainConvUNet supervised on VoComni's 21 pseudo-labelled
CT classes (Large-Scale-Medical ``nnUNetTrainer_pretrain.py`` loads it by name and shape after the same
unwrapping). It is recognised by a plain encoder with 21 segmentation outputs, and recorded as supervised.
"""
from __future__ import annotations

from typing import Mapping

import torch

from nnunet_voco.weights.citations import default_citations
from nnunet_voco.weights.encoder_state import Tally, strip_wrappers, tensors_only
from nnunet_voco.weights.source import SourceWeights, split_network_state

CONTAINERS = ("state_dict", "network_weights", "net", "student", "model")
VOCOMNI_CLASSES = 21


def unwrap(obj: Mapping) -> dict[str, torch.Tensor]:
    """Descend into the usual container keys until a name -> tensor mapping remains."""
    while True:
        inner = next((obj[k] for k in CONTAINERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            return tensors_only(obj)
        obj = inner


def bare_state(obj: Mapping) -> dict[str, torch.Tensor]:
    return strip_wrappers(unwrap(obj), extra=("backbone.",))


def is_dna_state(state: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(("encoder.stages.", "stages.")) for k in state)


def _segmentation_classes(state: Mapping[str, torch.Tensor]) -> int | None:
    heads = sorted(k for k in state if ".seg_layers." in k and k.endswith(".weight"))
    return int(state[heads[-1]].shape[0]) if heads else None


def read_dna_state(obj: Mapping, path: str) -> SourceWeights:
    """Read a bare state dict (see the module docstring); the architecture comes from the shapes."""
    state = bare_state(obj)
    if any(k.startswith("encoder.") for k in state):
        resenc = any(k.startswith("encoder.stem.") for k in state)
        encoder, heads, tally = split_network_state(state, "encoder.stages",
                                                    "encoder.stem" if resenc else "encoder.stages.0")
        prefix = "with the encoder. prefix"
    else:
        encoder = {k: v for k, v in state.items() if k.startswith(("stem.", "stages."))}
        heads, tally = {}, Tally()
        for k in state:
            if k not in encoder:
                tally.add(k.split(".")[0], 1, "skipped")
        prefix = "encoder only"
    classes = _segmentation_classes(state)
    plain = not any(k.startswith("stem.") for k in encoder)
    vocomni = plain and classes == VOCOMNI_CLASSES
    kind = "VoComni_nnunet" if vocomni else "dynamic-network-architectures state dict"
    facts = {"pretrain_dataset": "VoComni (CT, 21 pseudo-labelled classes; supervised)" if vocomni else None,
             "spacing": None, "spacing_style": None, "normalization_schemes": None, "patch_size": None,
             "input_channels": None, "recommended_downstream_patchsize": None, "supervised": bool(classes),
             "layout": prefix}
    return SourceWeights(kind, encoder, None, "tensor shapes (a bare state dict records no plan)", heads, tally,
                         facts, default_citations(kind, None), None)
