"""Loading VoCo weights into an nnU-Net trainer's network, loudly (used by ``nnUNetTrainerVoCo*``).

Weights written by ``voco_pretrain`` for these plans load strictly: the log reads ``VoCo: loaded N/N
encoder tensors from FILE (pretrained on ..., preset ..., ... steps)``; anything short of the full encoder
is an error unless ``nnUNet_voco_allow_partial=1`` is set (or the trainer class allows it); a different
number of input channels adapts the stem with :func:`nnunet_voco.checkpoint.adapt_input_channels`.

Imported weights (``voco_import_weights``: nnssl, nnU-Net, bare state dicts) go through the adaptation
rules of :mod:`nnunet_voco.weights.adaptation` instead: kernels averaged where the plans have 1 and the
weights 3, extra stages left random, surplus stages dropped, channels by the same rule; each adaptation
is a log line, a width or block mismatch stops the run naming ``voco_plan_like``. Differences in spacing
and normalisation are warned about, never changed. The weights' citations are printed.
"""
from __future__ import annotations

import os

from nnunet_voco.checkpoint import load_encoder, transfer_encoder, unwrap_network
from nnunet_voco.errors import UserInputError
from nnunet_voco.finetune.weights_lookup import ENV_ALLOW_PARTIAL, WeightsChoice, check_compatibility, find_voco_weights
from nnunet_voco.weights.adaptation import AdaptationError, apply_transfer
from nnunet_voco.weights.citations import citation_lines
from nnunet_voco.weights.target_plans import fact_warnings, fit_of


def find_trainer_weights(trainer, family: str = "cnn") -> WeightsChoice:
    """The weights for ``trainer``'s dataset, plans and configuration (:func:`find_voco_weights`)."""
    return find_voco_weights(trainer.plans_manager.dataset_name, trainer.plans_manager.plans_name,
                             trainer.configuration_name, family)


def load_voco_weights(trainer, family: str = "cnn", allow_partial: bool = False, choice: WeightsChoice | None = None):
    """Find, check and load VoCo weights into ``trainer.network``; returns the transfer report (or plan).

    Args:
        trainer: the nnU-Net trainer (initialised: its network exists).
        family: ``"cnn"`` or ``"swin"``; the weights must hold that encoder family.
        allow_partial: accept an incomplete transfer (also ``nnUNet_voco_allow_partial=1``).
        choice: weights the trainer already looked up (the Swin trainer does, to size its network);
            None: look them up now.

    Raises:
        FileNotFoundError: no weights (message: the ``voco_pretrain`` command to run).
        UserInputError: the weights were pre-trained for 0 steps (a random encoder).
        RuntimeError: incompatible checkpoint or incomplete transfer (message: the field/key).
    """
    if choice is None:
        choice = find_trainer_weights(trainer, family)
    state, meta = load_encoder(choice.path)
    if meta.get("steps") == 0:  # e.g. voco_pretrain --num_steps 0 before that was refused: a random encoder
        raise UserInputError(f"{choice.path} was pre-trained for 0 steps: it holds a randomly initialised encoder, "
                             f"not a pre-trained one; run voco_pretrain with --num_steps >= 1 (or train "
                             f"nnUNetTrainerVoCoScratch for a random start)")
    if meta.get("encoder_family") != family:
        raise RuntimeError(f"VoCo: {choice.path} holds a {meta.get('encoder_family')} encoder but this trainer "
                           f"fine-tunes a {family} network; use the matching trainer or weights")
    if meta.get("imported") and family == "cnn":
        report = _load_imported(trainer, state, meta, choice)
    else:
        report = _load_own(trainer, state, meta, choice, allow_partial)
    for line in citation_lines(meta.get("citations")):
        trainer.print_to_log_file(f"VoCo: please cite {line}")
    return report


def _load_own(trainer, state, meta, choice: WeightsChoice, allow_partial: bool):
    check_compatibility(meta, trainer.plans_manager.plans_name, trainer.configuration_name,
                        trainer.configuration_manager, choice.path)
    allow_partial = allow_partial or os.environ.get(ENV_ALLOW_PARTIAL, "0").lower() in ("1", "true", "yes")
    report = transfer_encoder(trainer.network, state, meta, allow_partial=allow_partial)
    source = ", ".join(meta.get("datasets") or [meta.get("pretrained_on") or "unknown data"])
    steps = meta.get("steps")
    trainer.print_to_log_file(
        f"VoCo: loaded {len(report.loaded)}/{report.expected} encoder tensors from {choice.path} (pretrained on "
        f"{source}, preset {meta.get('preset')}, {steps if steps is not None else 'unknown'} steps; {choice.reason})")
    for other in choice.others:
        trainer.print_to_log_file(f"VoCo: other candidate not used: {other}")
    if report.adapted:
        trainer.print_to_log_file(
            f"VoCo: adapted the input projection for {trainer.num_input_channels} input channels "
            f"(checkpoint: {meta.get('num_input_channels')}): each new channel gets the channel-summed kernel / "
            f"{trainer.num_input_channels} ({', '.join(report.adapted)})")
    if not report.complete:
        trainer.print_to_log_file(
            f"VoCo: WARNING partial transfer allowed: {len(report.missing)} missing, {len(report.mismatched)} "
            f"mismatched, {len(report.unexpected)} unexpected tensors")
    return report


def _load_imported(trainer, state, meta, choice: WeightsChoice):
    """Imported weights into the planned encoder by the adaptation rules; returns the TransferPlan."""
    encoder = unwrap_network(trainer.network).get_submodule(meta.get("key_to_encoder") or "encoder")
    plans, configuration = trainer.plans_manager.plans_name, trainer.configuration_name
    fit = fit_of(state, meta, encoder)
    if fit.verdict == "refused":
        raise RuntimeError(
            f"VoCo: {choice.path} does not fit {plans}/{configuration}: {fit.reason}; run `voco_plan_like "
            f"{choice.path} -d {int(trainer.plans_manager.dataset_name[7:10])} -p {plans}` and train "
            f"with the plans it writes (-p)")
    try:
        apply_transfer(fit.plan, fit.source, encoder)
    except AdaptationError as e:  # pragma: no cover - the dry run above decided the same
        raise RuntimeError(f"VoCo: {choice.path}: {e}") from None
    imported = meta["imported"]
    trainer.print_to_log_file(
        f"VoCo: loaded {fit.plan.loaded}/{fit.plan.expected} encoder tensors from {choice.path} (imported "
        f"{imported.get('source_format')}, trainer {imported.get('trainer_name') or 'not recorded'}, pre-trained on "
        f"{meta.get('pretrained_on')}; {'1:1' if fit.verdict == '1:1' else 'adapted'}; {choice.reason})")
    for line in fit.plan.lines():
        trainer.print_to_log_file(f"VoCo: adaptation: {line}")
    cm = trainer.configuration_manager
    for warning in fact_warnings(meta, cm.spacing, cm.normalization_schemes):
        trainer.print_to_log_file(f"VoCo: warning: {warning}")
    return fit.plan
