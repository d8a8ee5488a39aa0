"""Which VoCo weights a fine-tuning run uses, and whether they fit the network nnU-Net builds.

Lookup order (the trainer logs which one won and lists the other candidates):
    1. ``nnUNet_voco_weights=/path/voco_encoder.pth`` in the environment: that file, always
       (pooled pre-training on other datasets, imported official weights).
    2. Otherwise every finished ``voco_pretrain`` run under
       ``$nnUNet_results/*/VoCo__<plans>__<configuration>/`` whose datasets include the dataset being
       fine-tuned, or an unlabelled pool built with its plans (``voco_preprocess_unlabeled``), and
       whose encoder family matches the trainer (CNN or Swin). Of these the newest finished run
       (modification time of ``voco_encoder.pth``) is used.
Names and the listing of runs come from :mod:`nnunet_voco.artifacts`; this module holds the rules.
No candidate is an error that prints the ``voco_pretrain`` command to run: a VoCo trainer never
silently trains from scratch.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from nnunet_voco import artifacts
from nnunet_voco.checkpoint import to_plain
from nnunet_voco.nnunet import UserInputError

ENV_WEIGHTS = "nnUNet_voco_weights"
ENV_ALLOW_PARTIAL = "nnUNet_voco_allow_partial"

# Architecture kwargs that only shape the decoder: they may differ (the decoder is trained anew).
DECODER_ONLY_KWARGS = ("n_conv_per_stage_decoder",)


@dataclasses.dataclass
class WeightsChoice:
    """The encoder file a fine-tuning run uses, why it won, the candidates it beat, and its metadata.

    ``meta`` is the sidecar's metadata the lookup already read (None for ``$nnUNet_voco_weights``).
    """

    path: str
    reason: str
    others: list[str]
    meta: dict | None = None


def _candidates(dataset_name: str, plans_name: str, configuration: str,
                family: str) -> list[artifacts.EncoderArtifact]:
    """Encoders of finished runs that cover ``dataset_name`` with a ``family`` encoder, newest first."""
    try:
        found = artifacts.list_encoders(plans_name, configuration)
    except UserInputError:  # nnUNet_results not set: there is no run to find
        return []
    covering = [a for a in found if a.meta.get("encoder_family") == family and (
        dataset_name in (a.meta.get("datasets") or []) or dataset_name in (a.meta.get("plans_source_datasets") or []))]
    return sorted(covering, key=lambda a: os.path.getmtime(a.path), reverse=True)


def find_voco_weights(dataset_name: str, plans_name: str, configuration: str, family: str = "cnn") -> WeightsChoice:
    """Pick the weights for fine-tuning ``dataset_name`` (see the module docstring for the rule).

    Raises:
        FileNotFoundError: no weights; the message holds the ``voco_pretrain`` command to run.
    """
    explicit = os.environ.get(ENV_WEIGHTS)
    if explicit:
        if not os.path.isfile(explicit):
            raise FileNotFoundError(f"{ENV_WEIGHTS}={explicit} does not exist; point it at a "
                                    f"{artifacts.ENCODER_FILE} or unset it to use the weights voco_pretrain wrote "
                                    f"for {dataset_name}")
        return WeightsChoice(explicit, f"from ${ENV_WEIGHTS}", [])
    found = _candidates(dataset_name, plans_name, configuration, family)
    if not found:
        encoder = "" if family == "cnn" else " --encoder swin_b"
        plans = "" if plans_name == "nnUNetPlans" else f" -p {plans_name}"
        raise FileNotFoundError(
            f"no VoCo weights for {dataset_name} ({plans_name}, {configuration}, {family} encoder) under "
            f"$nnUNet_results/*/{artifacts.run_folder_name(plans_name, configuration)}/; run `voco_pretrain -d "
            f"{int(dataset_name[7:10])}{plans}{encoder} -c {configuration}` first, or set "
            f"{ENV_WEIGHTS}=/path/to/{artifacts.ENCODER_FILE}"
        )
    reason = "newest finished voco_pretrain run covering " + dataset_name
    return WeightsChoice(found[0].path, reason, [a.path for a in found[1:]], found[0].meta)


def _differences(a, b, prefix: str) -> list[tuple[str, object, object]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k in DECODER_ONLY_KWARGS:
                continue
            out += _differences(a.get(k), b.get(k), f"{prefix}.{k}")
        return out
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return [] if np.isclose(a, b) else [(prefix, a, b)]
    return [] if a == b else [(prefix, a, b)]


def check_compatibility(meta: dict, plans_name: str, configuration: str, configuration_manager, path: str) -> None:
    """Raise unless the checkpoint was pretrained for the network these plans build.

    Compared: configuration, architecture class and kwargs (stages, features, kernels, strides,
    blocks; decoder-only kwargs excluded), spacing and normalisation. Imported official weights carry
    no plans (``meta["architecture"]["network_class_name"]`` absent) and skip the plans checks.

    Raises:
        RuntimeError: naming the first differing field and both values.
    """
    arch = meta.get("architecture") or {}
    if meta.get("encoder_family") != "cnn" or "network_class_name" not in arch:
        return
    current = {
        "configuration": configuration,
        "architecture.network_class_name": configuration_manager.network_arch_class_name,
        "architecture.arch_kwargs": to_plain(configuration_manager.network_arch_init_kwargs),
        "spacing": to_plain(configuration_manager.spacing),
        "normalization_schemes": to_plain(configuration_manager.normalization_schemes),
    }
    stored = {
        "configuration": meta.get("configuration"),
        "architecture.network_class_name": arch.get("network_class_name"),
        "architecture.arch_kwargs": arch.get("arch_kwargs"),
        "spacing": meta.get("spacing"),
        "normalization_schemes": meta.get("normalization_schemes"),
    }
    for key in current:
        diffs = _differences(stored[key], current[key], key)
        if diffs:
            field, a, b = diffs[0]
            raise RuntimeError(
                f"VoCo: {path} does not fit this network: {field} is {a} in the checkpoint but {b} in "
                f"{plans_name}/{configuration}; pre-train with these plans (voco_pretrain -p {plans_name} -c "
                f"{configuration}) or point {ENV_WEIGHTS} at matching weights"
            )
