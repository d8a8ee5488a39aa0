"""nnU-Net's own ``checkpoint_final.pth`` / ``checkpoint_best.pth`` of any task (ECOSYSTEM_WEIGHTS.md 6.1 A.3).

The file holds ``network_weights`` (the whole network), ``init_args`` with the ``plans`` dict, the
``configuration`` and the ``dataset_json``, ``trainer_name``, the optimiser state and a log whose
values are numpy floats (hence the numpy allow-list of :mod:`nnunet_voco.weights.reading`). The
architecture is the one the plans declare for that configuration (``inherits_from`` resolved); its
spacing, normalisation, patch size and channels are the recorded pre-training facts. A network trained
in a 2-D configuration, or a Primus / other non-CNN network, is refused with the reason.
"""
from __future__ import annotations

from typing import Mapping

from nnunet_voco.checkpoint import to_plain
from nnunet_voco.weights.architecture import FAMILIES, REQUIRES_IMPORT, ArchitectureError
from nnunet_voco.weights.citations import default_citations
from nnunet_voco.weights.encoder_state import count_tensors, strip_wrappers, tensors_only
from nnunet_voco.weights.source import SourceWeights, split_network_state


def is_nnunet_checkpoint(obj: Mapping) -> bool:
    init = obj.get("init_args")
    return isinstance(obj.get("network_weights"), Mapping) and isinstance(init, Mapping) and \
        isinstance(init.get("plans"), Mapping) and "configuration" in init


def resolved_configuration(plans: Mapping, name: str) -> dict:
    """A configuration of nnU-Net plans with its ``inherits_from`` chain merged (as PlansManager does)."""
    configurations = plans.get("configurations") or {}
    if name not in configurations:
        raise ArchitectureError(f"the checkpoint's plans have no configuration {name!r}")
    config = dict(configurations[name])
    seen = {name}
    while "inherits_from" in config:
        parent = config.pop("inherits_from")
        if parent in seen or parent not in configurations:
            raise ArchitectureError(f"configuration {name!r} inherits from {parent!r}, which the plans lack")
        seen.add(parent)
        config = {**configurations[parent], **config}
    return config


def read_nnunet_checkpoint(obj: Mapping, path: str) -> SourceWeights:
    """Read an nnU-Net checkpoint (see the module docstring).

    Raises:
        ArchitectureError: 2-D configuration, Primus or another non-CNN network.
    """
    init = obj["init_args"]
    plans, configuration = to_plain(init["plans"], keep_tensors=False), str(init["configuration"])
    config = resolved_configuration(plans, configuration)
    declared = config.get("architecture") or {}
    class_name = str(declared.get("network_class_name") or "")
    if class_name.rsplit(".", 1)[-1] not in FAMILIES:
        raise ArchitectureError(f"{path} was trained with {class_name or 'an unknown network'}; only "
                                f"ResidualEncoderUNet and PlainConvUNet checkpoints import")
    if len(config.get("patch_size") or []) == 2 or "Conv2d" in str((declared.get("arch_kwargs") or {}).get("conv_op")):
        raise ArchitectureError(f"{path} was trained in the 2-D configuration {configuration!r}; only 3-D encoders "
                                f"import (use that dataset's 3d_fullres checkpoint)")
    arch = {"network_class_name": FAMILIES[class_name.rsplit(".", 1)[-1]], "arch_kwargs": declared["arch_kwargs"],
            "arch_kwargs_requires_import": list(declared.get("_kw_requires_import") or REQUIRES_IMPORT)}
    resenc = arch["network_class_name"] == FAMILIES["ResidualEncoderUNet"]
    state = strip_wrappers(tensors_only(obj["network_weights"]))
    encoder, heads, tally = split_network_state(state, "encoder.stages", "encoder.stem" if resenc else "encoder.stages.0")
    for key in ("optimizer_state", "grad_scaler_state"):
        tally.add(key, count_tensors(obj.get(key)), "skipped")
    dataset_json = init.get("dataset_json") or {}
    channels = dataset_json.get("channel_names") or dataset_json.get("modality") or {}
    facts = {
        "pretrain_dataset": plans.get("dataset_name"), "pretrain_plans": plans.get("plans_name"),
        "configuration": configuration, "spacing": config.get("spacing"), "spacing_style": "nnU-Net plans",
        "normalization_schemes": config.get("normalization_schemes"), "patch_size": config.get("patch_size"),
        "input_channels": len(channels) or None, "recommended_downstream_patchsize": config.get("patch_size"),
        "supervised": True,
    }
    trainer = obj.get("trainer_name")
    citations = obj.get("citations") if isinstance(obj.get("citations"), list) else \
        default_citations("nnU-Net checkpoint", trainer)
    return SourceWeights("nnU-Net checkpoint", encoder, arch, f"nnU-Net plans ({plans.get('plans_name')}, "
                         f"{configuration})", heads, tally, facts, citations, trainer)
