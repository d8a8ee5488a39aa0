"""``voco_pretrain --init WEIGHTS``: continue VoCo pre-training from imported (or our own) weights.

The encoder must be the one the pool's plans build: a 1:1 load, or one whose only difference is the
number of input channels (adapted by the project's rule). Anything else (kernels, stages, widths) is an
error naming the ``voco_plan_like`` command, because a partly random encoder would not be the imported
one that continued pre-training and the step-0 monitor are meant to measure.

The projector is taken from the file's ``heads`` (an nnssl VoCo checkpoint carries one: 1120 -> 2048 ->
2048 -> 2048 for ResEncL) when every shape matches this run's projector (``--head_dim 2048`` for those);
otherwise it starts fresh, and the log says why. The EMA teachers are then reset to the loaded student,
as they are at any start. Under ``--c`` the resumed state is loaded afterwards and replaces all of this
(the loop's resume comes after the set-up), so a continued run never restarts from the init weights.
"""
from __future__ import annotations

import os

from nnunet_voco.checkpoint import ENCODER_FORMAT, CheckpointError, check_schema, load_file, transfer_encoder
from nnunet_voco.nnunet import UserInputError
from nnunet_voco.weights.adaptation import apply_transfer
from nnunet_voco.weights.citations import default_citations
from nnunet_voco.weights.target_plans import fact_warnings, fit_of


def read_encoder_file(path: str) -> tuple[dict, dict, dict]:
    """``(encoder state, meta, heads)`` of a ``voco_encoder.pth`` (ours or imported).

    Raises:
        UserInputError: missing, or a file of another format (the message names ``voco_import_weights``).
    """
    if not os.path.isfile(path):
        raise UserInputError(f"--init {path} does not exist; pass a voco_encoder.pth (voco_pretrain's, or one written "
                             f"by voco_import_weights)")
    obj = load_file(path)
    try:
        check_schema(obj, path, ENCODER_FORMAT)
    except CheckpointError:
        raise UserInputError(f"--init {path} is not an nnunet-voco encoder file; convert it first: `voco_import_weights "
                             f"{path} -o imported.pth`, then --init imported.pth") from None
    return obj["encoder"], obj["meta"], obj.get("heads") or {}


def _plan_like_hint(path: str, source, plans_name: str) -> str:
    from nnunet_voco.pool.provenance import read_pool_provenance

    provenance = read_pool_provenance(os.path.dirname(source.data_folder)) or {}
    planned = provenance.get("plans_source_dataset") or source.name
    rebuild = "" if planned == source.name else f", then rebuild the pool with voco_preprocess_unlabeled -p <those plans>"
    return f"run `voco_plan_like {path} -d {int(planned[7:10])} -p {plans_name}` and pre-train with -p <the plans it " \
           f"writes>{rebuild}"


def _dims(head: dict) -> str:
    """``in -> hidden -> hidden -> out`` of a projector state dict (Linear layers at 0, 3, 6)."""
    if "0.weight" not in head:
        return "of another layout"
    widths = [int(head["0.weight"].shape[1])] + [int(head[k].shape[0]) for k in ("0.weight", "3.weight", "6.weight")
                                                  if k in head]
    return " -> ".join(map(str, widths))


def _projector_line(model, heads: dict) -> str:
    head = heads.get("projector")
    ours = model.projector.state_dict()
    if not head:
        return "VoCo: --init: the file has no projector; this run's projector starts fresh"
    if set(head) != set(ours) or any(tuple(head[k].shape) != tuple(ours[k].shape) for k in ours):
        return (f"VoCo: --init: projector starts fresh: the file's is {_dims(head)}, this run's {_dims(ours)} (set "
                f"--head_dim to the file's width to continue it)")
    model.projector.load_state_dict(head)
    return f"VoCo: --init: projector loaded ({len(head)} tensors)"


def initialise_from(model, bundle, path: str, source, plans_name: str, configuration: str) -> tuple[str, ...]:
    """Load ``path`` into the student (encoder, projector where it fits) and reset the teachers.

    Args:
        model: the run's :class:`~nnunet_voco.voco.model.VoCoModel` (before the optimiser steps).
        bundle: its encoder bundle (``meta`` gains ``initialised_from`` and the weights' citations, so the
            run's ``voco_encoder.json`` records where it started).
        path: the ``--init`` file.
        source: the first dataset of the run (its plans define the encoder).

    Returns:
        The log lines.

    Raises:
        UserInputError: another format, another encoder family, or plans that do not build this encoder.
    """
    state, meta, heads = read_encoder_file(path)
    family = bundle.meta.get("encoder_family")
    if meta.get("encoder_family") != family:
        raise UserInputError(f"--init {path} holds a {meta.get('encoder_family')} encoder but this run trains a {family} "
                             f"encoder; pass --encoder to match, or other weights")
    if family == "cnn":
        fit = fit_of(state, meta, model.encoder)
        if fit.verdict not in ("1:1", "channels"):
            why = fit.reason or "; ".join(fit.plan.lines())
            raise UserInputError(f"--init {path}: the encoder of {source.name}'s {plans_name} {configuration} is not the "
                                 f"weights' ({why}); {_plan_like_hint(path, source, plans_name)}")
        apply_transfer(fit.plan, fit.source, model.encoder)
        loaded = f"{fit.plan.loaded}/{fit.plan.expected} encoder tensors" + \
            ("" if fit.verdict == "1:1" else f" ({'; '.join(fit.plan.lines())})")
    else:
        try:
            report = transfer_encoder(model.encoder, state, meta)
        except RuntimeError as e:
            raise UserInputError(f"--init {path} does not fit this Swin encoder ({str(e).splitlines()[0][:200]}); use "
                                 f"the --encoder / --swin_feature_size the weights were made with") from None
        loaded = f"{len(report.loaded)}/{report.expected} encoder tensors"
    lines = [f"VoCo: --init: loaded {loaded} from {path} (pre-trained on {meta.get('pretrained_on') or 'unknown data'}"
             f"{', imported ' + meta['imported'].get('source_format', '') if meta.get('imported') else ''}); a run "
             f"continued with --c resumes its own checkpoint instead", _projector_line(model, heads)]
    model.teacher_projector.load_state_dict(model.projector.state_dict())
    if model.teacher_encoder is not None:
        model.teacher_encoder.load_state_dict(model.encoder.state_dict())
    cm = source.configuration_manager
    lines += [f"VoCo: --init: warning: {w}" for w in fact_warnings(meta, cm.spacing, cm.normalization_schemes)]
    imported = meta.get("imported") or {}
    bundle.meta["initialised_from"] = {"file": os.path.abspath(path), "sha256": imported.get("sha256"),
                                       "source_format": imported.get("source_format"),
                                       "pretrained_on": meta.get("pretrained_on")}
    bundle.meta["citations"] = meta.get("citations") or default_citations("nnunet-voco encoder", None)
    return tuple(lines)
