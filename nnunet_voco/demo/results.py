"""Reading the outputs of a ``voco_demo`` run: Dice, pre-training metrics and training budgets.

The files are the ones the real commands left: nnU-Net's final-validation ``summary.json`` of every
training run (``fold_SEED/validation``: mean Dice per class over the held-out cases), nnU-Net's
``debug.json`` (the trainers' budget) and the pre-training's ``metrics.jsonl`` (its held-out
position-monitor rows carry ``val_*`` keys). The report and the figure both read through here.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from nnunet_voco.demo.phantom import LABELS

CLASS_NAMES = {str(v): k for k, v in LABELS.items() if v > 0}
LOSS_TERMS = ("loss", "pos", "neg", "reg", "inter")
MONITOR_KEYS = ("val_position_accuracy", "val_overlap_error", "val_logit_gap", "val_chance", "val_prior",
                "val_overlap_hit", "val_targets", "train_position_accuracy", "train_overlap_hit", "train_val_gap",
                "train_targets")


def _number(value: float | None) -> float | None:
    """JSON-safe float: NaN (a class absent from reference and prediction) becomes None."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def read_dice(summary_path: str) -> dict:
    """Mean Dice per class over the held-out cases from an nnU-Net ``summary.json``.

    Args:
        summary_path: File written by nnU-Net's final validation (or ``nnUNetv2_evaluate_folder``).

    Returns:
        ``{"per_class": {name: dice}, "mean": foreground mean, "per_case": {case: mean dice}}``;
        NaN values (class absent in both) are None.
    """
    with open(summary_path, encoding="utf-8") as f:
        summary = json.load(f)
    per_case = {}
    for row in summary["metric_per_case"]:
        case = os.path.basename(row["reference_file"]).split(".")[0]
        values = [m["Dice"] for m in row["metrics"].values() if not math.isnan(m["Dice"])]
        per_case[case] = _number(float(np.mean(values)) if values else None)
    return {"per_class": {CLASS_NAMES.get(k, k): _number(v["Dice"]) for k, v in summary["mean"].items()},
            "mean": _number(summary["foreground_mean"]["Dice"]), "per_case": per_case}


def read_metrics(folder: str) -> list[dict]:
    """Rows of ``metrics.jsonl`` of a ``voco_pretrain`` run (empty if absent)."""
    path = os.path.join(folder, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def monitor_rows(rows: list[dict]) -> list[dict]:
    """The held-out position-monitor rows of ``metrics.jsonl`` (step plus the ``val_*`` keys)."""
    return [{"step": r["step"], **{k: r[k] for k in MONITOR_KEYS if k in r}}
            for r in rows if "val_position_accuracy" in r]


def read_budget(fold_folder: str) -> dict:
    """Epochs, iterations and batch size nnU-Net recorded for a training run (``debug.json``), or {}."""
    path = os.path.join(fold_folder, "debug.json")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        debug = json.load(f)
    keys = ("num_epochs", "num_iterations_per_epoch", "batch_size", "initial_lr")
    return {k: debug[k] for k in keys if k in debug}
