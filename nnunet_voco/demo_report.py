"""The report of ``voco_demo``: Dice table, ``results.json`` and a PNG figure.

Inputs are the files the real commands left: ``summary.json`` of ``nnUNetv2_evaluate_folder`` per
arm (VoCo-pretrained, scratch), nnU-Net's ``debug.json`` (the trainers' budget), the pre-training's
``metrics.jsonl`` and the held-out images, labels and predictions.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from nnunet_voco.demo_stages import SYNTHETIC_NOTE, DemoFolders
from nnunet_voco.phantom import LABELS

ARMS = {"voco": "VoCo-pretrained", "scratch": "scratch"}
CLASS_NAMES = {str(v): k for k, v in LABELS.items() if v > 0}
LOSS_TERMS = ("loss", "pos", "neg", "reg", "inter")


def _number(value: float | None) -> float | None:
    """JSON-safe float: NaN (a class absent from reference and prediction) becomes None."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def read_dice(summary_path: str) -> dict:
    """Mean Dice per class over the held-out cases from an nnU-Net ``summary.json``.

    Args:
        summary_path: File written by ``nnUNetv2_evaluate_folder``.

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


def _budget(fold_folder: str) -> dict:
    """Epochs and iterations nnU-Net recorded for a training run (``debug.json``), or {}."""
    path = os.path.join(fold_folder, "debug.json")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        debug = json.load(f)
    keys = ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch", "initial_lr")
    return {k: debug[k] for k in keys if k in debug}


def read_metrics(folder: str) -> list[dict]:
    """Rows of ``metrics.jsonl`` of a ``voco_pretrain`` run (empty if absent)."""
    path = os.path.join(folder, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def collect_results(folders: DemoFolders, state: dict, device: str) -> dict:
    """Gathers Dice, budgets, pre-training losses and stage costs into one JSON-ready dictionary.

    Args:
        folders: The preset's folders.
        state: From :func:`nnunet_voco.demo_workflow.run_stages`.
        device: Device the run used.

    Returns:
        The dictionary written to ``results.json``.
    """
    metrics = read_metrics(folders.pretrain_folder)
    return {
        "synthetic": True, "note": SYNTHETIC_NOTE, "preset": folders.preset.name, "device": device,
        "dataset": folders.dataset, "pool": folders.pool, "test_cases": folders.test_ids(),
        "dice": {arm: read_dice(os.path.join(folders.predictions(arm), "summary.json")) for arm in ARMS},
        "trainers": {arm: folders.trainer(arm) for arm in ARMS},
        "budget": {arm: _budget(folders.fold_folder(arm)) for arm in ARMS},
        "pretraining": {"steps": folders.preset.pretrain_steps, "folder": folders.pretrain_folder,
                        "first_loss": metrics[0]["loss"] if metrics else None,
                        "last_loss": metrics[-1]["loss"] if metrics else None},
        "stages": state["stages"],
    }


def _cell(value: float | None) -> str:
    return "   n/a" if value is None else f"{value:6.3f}"


def format_table(results: dict) -> str:
    """The printed summary: Dice per class (pretrained vs scratch) and wall time per stage.

    Args:
        results: From :func:`collect_results`.

    Returns:
        Multi-line text.
    """
    voco, scratch = results["dice"]["voco"], results["dice"]["scratch"]
    lines = [f"VoCo demo, preset {results['preset']!r} ({results['device']}): SYNTHETIC phantom, not patient data",
             f"Dice on {len(results['test_cases'])} held-out cases (nnUNetv2_evaluate_folder, mean over cases)",
             f"  {'class':<10} {'VoCo-pretrained':>15} {'scratch':>9} {'difference':>11}"]
    rows = [(name, voco["per_class"].get(name), scratch["per_class"].get(name)) for name in CLASS_NAMES.values()]
    for name, a, b in rows + [("mean", voco["mean"], scratch["mean"])]:
        diff = "       n/a" if a is None or b is None else f"{a - b:+10.3f}"
        lines.append(f"  {name:<10} {_cell(a):>15} {_cell(b):>9} {diff:>11}")
    budget = results["budget"]["voco"]
    if budget:
        lines.append(f"Fine-tuning budget (both arms): {budget['num_epochs']} epochs x "
                     f"{budget['num_iterations_per_epoch']} iterations; pre-training "
                     f"{results['pretraining']['steps']} steps")
    lines += ["Time per stage, from the run that made its outputs (CPU s: all its processes; load: 1-min load",
              f"average at its end on this {os.cpu_count()}-CPU machine; other work on the machine inflates wall s)",
              f"  {'stage':<17} {'wall s':>7} {'CPU s':>7} {'load':>5}  status"]
    wall_total = cpu_total = 0.0
    for key, record in results["stages"].items():
        wall, cpu, load = (record.get(k) for k in ("wall_s", "cpu_s", "load_avg"))
        wall_total, cpu_total = wall_total + (wall or 0.0), cpu_total + (cpu or 0.0)
        status = "reused" if record.get("reused") else "ran"
        lines.append(f"  {key:<17} {_fixed(wall):>7} {_fixed(cpu):>7} {_fixed(load):>5}  {status}")
    lines.append(f"  {'total':<17} {wall_total:>7.1f} {cpu_total:>7.1f} {'':>5}  (runs that made the outputs)")
    return "\n".join(lines)


def _fixed(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def write_report(folders: DemoFolders, state: dict, device: str) -> dict:
    """Prints the table and writes ``results.json``, ``results.txt`` and ``voco_demo.png`` under ``<run>``.

    Args:
        folders: The preset's folders.
        state: From :func:`nnunet_voco.demo_workflow.run_stages`.
        device: Device the run used.

    Returns:
        The results dictionary, with ``figure`` and ``table`` paths added.
    """
    from nnunet_voco.demo_figure import plot_demo_figure  # matplotlib only here

    results = collect_results(folders, state, device)
    results["figure"] = plot_demo_figure(folders, results, os.path.join(folders.run, "voco_demo.png"))
    results["table"] = os.path.join(folders.run, "results.txt")
    table = format_table(results)
    print("\n" + table + f"\nFigure: {results['figure']}\nResults: {os.path.join(folders.run, 'results.json')}",
          flush=True)
    with open(results["table"], "w", encoding="utf-8") as f:
        f.write(table + "\n")
    with open(os.path.join(folders.run, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    return results
