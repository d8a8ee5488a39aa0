"""nnssl / OpenMind checkpoints (ECOSYSTEM_WEIGHTS.md sections 1 and 6.1 A.1-A.2).

An nnssl checkpoint is a dict with ``network_weights`` (the pretext module's state dict: ``encoder.*``
plus, for VoCo, ``projector.*``; MAE-type files the whole UNet) and, when published, an
``nnssl_adaptation_plan`` that names the architecture (``ResEncL`` or a dynamic class with its kwargs),
the pre-training plan (dataset, spacing, normalisation, patch), the input channels and the key prefixes.
The same plan may sit beside the file as ``adaptation_plan.json`` (with ``trainer_name``); the embedded
plan wins. Raw training files add ``optimizer_state``, ``logging``, ``_best_ema``... and S3D/Spark runs have
no plan at all: their architecture is then read from the tensor shapes.

Primus (``arch_class_name`` ``Primus*``, keys ``eva.*``) is a ViT: refused, with the reason.
"""
from __future__ import annotations

from typing import Mapping

from nnunet_voco.checkpoint import to_plain
from nnunet_voco.weights.architecture import FAMILIES, REQUIRES_IMPORT, ArchitectureError, resencl_architecture
from nnunet_voco.weights.citations import default_citations
from nnunet_voco.weights.encoder_state import count_tensors, strip_wrappers, tensors_only
from nnunet_voco.weights.source import SourceWeights, first_configuration, split_network_state

NNSSL_TRAINING_KEYS = ("optimizer_state", "grad_scaler_state", "logging", "_best_ema", "current_epoch", "spark_weights")


def is_nnssl(obj: Mapping, sidecar: dict | None) -> bool:
    """An nnssl checkpoint: ``network_weights`` with an adaptation plan, nnssl init args or a plan beside it."""
    if not isinstance(obj.get("network_weights"), Mapping):
        return False
    init = obj.get("init_args") if isinstance(obj.get("init_args"), Mapping) else {}
    if "plans" in init and "configuration" in init:  # nnU-Net's own checkpoint
        return False
    return "nnssl_adaptation_plan" in obj or "plan" in init or "pretrain_json" in init or sidecar is not None


def _refuse_primus(plan: Mapping, state: Mapping, path: str) -> None:
    name = str(((plan or {}).get("architecture_plans") or {}).get("arch_class_name") or "")
    if name.startswith("Primus") or (plan or {}).get("key_to_encoder") == "eva" or any(k.startswith("eva.") for k in state):
        raise ArchitectureError(
            f"{path} is a Primus (vision transformer) checkpoint ({name or 'eva.* keys'}); nnunet-voco imports CNN "
            f"encoders (ResEnc / PlainConvUNet) and SwinUNETR only: fine-tune Primus with nnU-Net master's "
            f"PretrainedTrainer, or pick the ResEncL sibling of these weights")


def declared_architecture(plan: Mapping) -> tuple[dict | None, str]:
    """The architecture an adaptation plan declares, or ``(None, why)`` when the shapes must tell."""
    arch = (plan or {}).get("architecture_plans") or {}
    name = str(arch.get("arch_class_name") or "")
    if name == "ResEncL":
        return resencl_architecture(), "adaptation plan (ResEncL)"
    kwargs = arch.get("arch_kwargs")
    if name.rsplit(".", 1)[-1] in FAMILIES and isinstance(kwargs, Mapping):
        return {"network_class_name": FAMILIES[name.rsplit(".", 1)[-1]], "arch_kwargs": to_plain(kwargs, keep_tensors=False),
                "arch_kwargs_requires_import": list(arch.get("arch_kwargs_requiring_import") or REQUIRES_IMPORT)}, \
            f"adaptation plan ({name.rsplit('.', 1)[-1]} kwargs)"
    return None, f"tensor shapes (the plan names {name or 'no architecture'} without kwargs)"


def read_nnssl(obj: Mapping, path: str, sidecar: dict | None) -> SourceWeights:
    """Read an nnssl checkpoint (see the module docstring).

    Raises:
        ArchitectureError: Primus.
    """
    embedded = obj.get("nnssl_adaptation_plan")
    plan = to_plain(embedded if isinstance(embedded, Mapping) else
                    {k: v for k, v in (sidecar or {}).items() if k != "trainer_name"} if sidecar else {}, keep_tensors=False)
    state = strip_wrappers(tensors_only(obj["network_weights"]))
    _refuse_primus(plan, state, path)
    encoder, heads, tally = split_network_state(state, plan.get("key_to_encoder") or "encoder.stages",
                                                plan.get("key_to_stem") or "encoder.stem")
    for key in NNSSL_TRAINING_KEYS:  # training state: tensors there are not network weights
        tally.add(key, count_tensors(obj.get(key)), "skipped")
    arch, arch_source = declared_architecture(plan) if plan else (None, "tensor shapes (no adaptation plan)")
    pretrain = plan.get("pretrain_plan") or {}
    config_name, config = first_configuration(pretrain)
    trainer = obj.get("trainer_name") or (sidecar or {}).get("trainer_name")
    facts = {
        "pretrain_dataset": pretrain.get("dataset_name"), "pretrain_plans": pretrain.get("plans_name"),
        "configuration": config_name, "spacing": config.get("spacing"), "spacing_style": config.get("spacing_style"),
        "normalization_schemes": config.get("normalization_schemes"), "patch_size": config.get("patch_size"),
        "input_channels": plan.get("pretrain_num_input_channels"),
        "recommended_downstream_patchsize": plan.get("recommended_downstream_patchsize"),
    }
    kind = ("nnssl" if isinstance(embedded, Mapping) else "nnssl (plan from adaptation_plan.json)" if sidecar
            else "nnssl (no plan)")
    citations = obj.get("citations") if isinstance(obj.get("citations"), list) else default_citations(kind, trainer)
    return SourceWeights(kind, encoder, arch, arch_source, heads, tally, facts, to_plain(citations, keep_tensors=False), trainer)
