"""``voco_import_weights --inspect``: what a weights file is, and whether it fits a dataset's plans.

Reads the file exactly as the import does (same detection, same checks) and writes nothing. With a
dataset, the adaptation rules are dry-run against the encoder its plans build (meta device), so the
verdict is the one the trainer will reach: 1:1, input channels adapted, topology adapted (kernels,
stages), or refused with the reason and the ``voco_plan_like`` command that fixes it.
"""
from __future__ import annotations

from nnunet_voco.weights.citations import citation_lines
from nnunet_voco.weights.importer import ImportResult
from nnunet_voco.weights.target_plans import TargetPlans, fact_warnings, fit_of


def describe_weights(result: ImportResult) -> list[str]:
    """Format, architecture, recorded pre-training facts, tensor counts, heads and citations."""
    lines = result.lines()
    for name, dims in (result.meta.get("heads") or {}).items():
        lines.append(f"{name}: {' -> '.join(map(str, dims))} (reused by voco_pretrain --init when the shapes match)")
    lines += [f"cite: {line}" for line in citation_lines(result.meta.get("citations"))]
    return lines


def describe_fit(result: ImportResult, target: TargetPlans, weights_arg: str) -> list[str]:
    """Whether the weights fit ``target`` as they are, with adaptations, or need ``voco_plan_like`` (and why)."""
    where = f"{target.dataset_name} {target.plans_name} {target.configuration}"
    plan_like = f"voco_plan_like {weights_arg} -d {target.dataset_id} -p {target.plans_name}"
    if result.meta["encoder_family"] != "cnn":
        return [f"fit with {where}: SwinUNETR weights fine-tune with -tr nnUNetTrainerVoCoSwin on any 3-D plans (the "
                f"patch is rounded to multiples of 32); voco_plan_like does not apply"]
    fit = fit_of(result.encoder, result.meta, target.encoder())
    if fit.verdict == "refused":
        lines = [f"fit with {where}: NO, {fit.reason}; run `{plan_like}` for plans like the weights"]
    else:
        plan = fit.plan
        head = {"1:1": f"yes, as they are: {plan.loaded}/{plan.expected} encoder tensors load 1:1",
                "channels": f"yes: {plan.loaded}/{plan.expected} encoder tensors, the input projection adapted",
                "adapted": f"with adaptations: {plan.loaded}/{plan.expected} encoder tensors; `{plan_like}` gives "
                           f"plans with a 1:1 load"}[fit.verdict]
        lines = [f"fit with {where}: {head}"] + [f"  {line}" for line in plan.lines()]
    lines += [f"  warning: {w}" for w in fact_warnings(result.meta, target.config.get("spacing"),
                                                       target.config.get("normalization_schemes"))]
    return lines
