"""The report of ``voco_demo``: seed statistics, verdicts, the printed tables, ``results.json`` and the figure.

Inputs are the files the real commands left, read by :mod:`nnunet_voco.demo.results`: nnU-Net's
final-validation Dice of every training run, its recorded budget and the pre-training's
``metrics.jsonl``. The figure is drawn by :mod:`nnunet_voco.demo.figure`.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from nnunet_voco.demo.arms import ARMS, COMPARISONS
from nnunet_voco.demo.figure import plot_demo_figure
from nnunet_voco.demo.folders import DemoFolders, disk_usage
from nnunet_voco.demo.phantom import SYNTHETIC_NOTE
from nnunet_voco.demo.results import CLASS_NAMES, monitor_rows, read_budget, read_dice, read_metrics

def seed_stats(values: list[float | None]) -> dict:
    """Mean and sample standard deviation over seeds (None entries are skipped).

    Args:
        values: One value per seed.

    Returns:
        ``{"mean", "sd", "n", "per_seed"}``; ``sd`` is 0.0 for one seed, ``mean`` None for none.
    """
    kept = [v for v in values if v is not None]
    mean = float(np.mean(kept)) if kept else None
    sd = float(np.std(kept, ddof=1)) if len(kept) > 1 else 0.0
    return {"mean": mean, "sd": sd, "n": len(kept), "per_seed": list(values)}


def verdict(name: str, pretrained: dict, baseline: dict) -> dict:
    """Says whether the VoCo arm beats its baseline: difference of means against 2 standard errors.

    Args:
        name: Comparison name ("frozen-encoder probe", ...).
        pretrained: :func:`seed_stats` of the VoCo arm's mean Dice.
        baseline: :func:`seed_stats` of the baseline arm's mean Dice.

    Returns:
        ``{"difference", "standard_error", "voco_better": bool, "text"}``.
    """
    if pretrained["mean"] is None or baseline["mean"] is None:
        return {"difference": None, "standard_error": None, "voco_better": False,
                "text": f"{name}: no Dice (a run is missing)"}
    diff = pretrained["mean"] - baseline["mean"]
    se = math.sqrt(pretrained["sd"] ** 2 / max(pretrained["n"], 1) + baseline["sd"] ** 2 / max(baseline["n"], 1))
    if diff > 2 * se and pretrained["n"] > 1:
        text = f"{name}: VoCo beats the baseline by {diff:+.3f} mean Dice (more than 2 SE = {2 * se:.3f})"
    elif diff < -2 * se and pretrained["n"] > 1:
        text = f"{name}: VoCo does NOT beat the baseline: it is worse by {diff:+.3f} (more than 2 SE = {2 * se:.3f})"
    else:
        text = (f"{name}: VoCo does NOT beat the baseline: difference {diff:+.3f} mean Dice is within 2 SE = "
                f"{2 * se:.3f} over {pretrained['n']} seeds")
    return {"difference": diff, "standard_error": se, "voco_better": bool(diff > 2 * se and pretrained["n"] > 1),
            "text": text}


def _arm_dice(folders: DemoFolders, arm: str) -> dict:
    runs = {}
    for seed in folders.run_size.seeds:
        path = folders.summary(arm, seed)
        runs[str(seed)] = read_dice(path) if os.path.isfile(path) else None
    per_class = {name: seed_stats([r["per_class"].get(name) if r else None for r in runs.values()])
                 for name in CLASS_NAMES.values()}
    return {"trainer": folders.trainer(arm), "runs": runs, "per_class": per_class,
            "mean": seed_stats([r["mean"] if r else None for r in runs.values()])}


def collect_results(folders: DemoFolders, state: dict, device: str) -> dict:
    """Gathers Dice, verdicts, the pre-training monitor and stage costs into one JSON-ready dictionary.

    Args:
        folders: The run size's folders.
        state: From :func:`nnunet_voco.demo.workflow.run_stages`.
        device: Device the run used.

    Returns:
        The dictionary written to ``results.json``.
    """
    rows = read_metrics(folders.pretrain_folder)
    losses = [r for r in rows if "loss" in r]
    p = folders.run_size
    dice = {arm: _arm_dice(folders, arm) for arm in p.arms}
    return {
        "synthetic": True, "note": SYNTHETIC_NOTE, "preset": p.name, "device": device,
        "dataset": folders.dataset, "pool": folders.pool, "train_cases": folders.train_ids(),
        "heldout_cases": folders.heldout_ids(), "seeds": list(p.seeds), "dice": dice,
        "verdicts": {f"{a}_vs_{b}": verdict(name, dice[a]["mean"], dice[b]["mean"])
                     for name, a, b in comparisons(p.arms)},
        "budget": read_budget(folders.fold_folder(p.arms[0], p.seeds[0])),
        "disk_mib": round(disk_usage(folders.work) / 2**20, 1),
        "pretraining": {"steps": p.pretrain_steps, "lr": p.pretrain_lr, "batch_size": p.pretrain_batch_size,
                        "folder": folders.pretrain_folder,
                        "first_loss": losses[0]["loss"] if losses else None,
                        "last_loss": losses[-1]["loss"] if losses else None, "monitor": monitor_rows(rows)},
        "stages": state["stages"],
    }


def comparisons(arms: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """The comparisons of :data:`COMPARISONS` whose two arms are both trained."""
    return [(name, a, b) for name, a, b in COMPARISONS if a in arms and b in arms]


def pretext_gain(monitor: list[dict]) -> tuple[float, float] | None:
    """Held-out position accuracy gain from the first to the last evaluation and its standard error
    (binomial, both evaluations on the same ``val_targets`` target crops), or None without rows."""
    if len(monitor) < 2:
        return None
    first, last = monitor[0]["val_position_accuracy"], monitor[-1]["val_position_accuracy"]
    n = max(monitor[-1].get("val_targets", 96), 1)
    return last - first, math.sqrt((first * (1 - first) + last * (1 - last)) / n)


def monitor_text(monitor: list[dict]) -> str:
    """One line on what the position monitor says (step 0 vs the end, chance, prior, training windows)."""
    if not monitor:
        return "pre-training monitor: no held-out rows in metrics.jsonl (--val_cases 0?)"
    first, last = monitor[0], monitor[-1]
    nan = float("nan")
    gain = pretext_gain(monitor)
    if gain is None:
        learned = ""
    elif gain[0] > 2 * gain[1]:
        learned = f"; it rose by {gain[0]:+.3f} (more than 2 SE = {2 * gain[1]:.3f})"
    else:
        learned = f"; the change {gain[0]:+.3f} is within 2 SE = {2 * gain[1]:.3f}"
    train = (f"; on training-case windows {first['train_position_accuracy']:.3f} -> "
             f"{last['train_position_accuracy']:.3f}" if "train_position_accuracy" in first
             and "train_position_accuracy" in last else "")
    return (f"pre-training monitor: held-out position accuracy {first['val_position_accuracy']:.3f} at step "
            f"{first['step']} -> {last['val_position_accuracy']:.3f} at step {last['step']} (chance "
            f"{last.get('val_chance', nan):.3f}, best constant guess {last.get('val_prior', nan):.3f}){learned}{train}")


def closing_text(results: dict) -> str:
    """The last line of the table: what the comparisons and the monitor say together."""
    verdicts = results["verdicts"].values()
    if any(v["voco_better"] for v in verdicts):
        return "VoCo beats its baseline in at least one comparison above (difference of means beyond 2 SE)."
    gain = pretext_gain(results["pretraining"]["monitor"])
    if gain is None:
        why = "the pre-training monitor was off, so nothing says whether the encoder learned the pretext"
    elif gain[0] > 2 * gain[1]:
        why = ("the encoder did learn the pretext (held-out position accuracy rose beyond 2 SE), but at this "
               "fine-tuning budget that did not carry over into Dice")
    else:
        why = "the pretext barely moved (within 2 SE of the untrained encoder), so little could carry over"
    return f"VoCo does not beat its baseline here: {why}."


def _ms(stats: dict) -> str:
    return "      n/a" if stats["mean"] is None else f"{stats['mean']:.3f}+/-{stats['sd']:.3f}"


def _per_seed(stats: dict) -> str:
    return " ".join("n/a" if v is None else f"{v:.3f}" for v in stats["per_seed"])


def _comparison_lines(results: dict, name: str, a: str, b: str) -> list[str]:
    da, db = results["dice"][a], results["dice"][b]
    lines = [f"{name}: {da['trainer']} vs {db['trainer']} (mean +/- sd over seeds {results['seeds']})",
             f"  {'class':<10} {ARMS[a][1]:>22} {ARMS[b][1]:>22} {'difference':>11}"]
    for cls in list(CLASS_NAMES.values()) + ["mean"]:
        sa, sb = (da["mean"], db["mean"]) if cls == "mean" else (da["per_class"][cls], db["per_class"][cls])
        diff = "n/a" if sa["mean"] is None or sb["mean"] is None else f"{sa['mean'] - sb['mean']:+.3f}"
        lines.append(f"  {cls:<10} {_ms(sa):>22} {_ms(sb):>22} {diff:>11}")
    lines.append(f"  per-seed mean Dice: {ARMS[a][1]} [{_per_seed(da['mean'])}], {ARMS[b][1]} "
                 f"[{_per_seed(db['mean'])}]")
    lines.append("  " + results["verdicts"][f"{a}_vs_{b}"]["text"])
    return lines


def format_table(results: dict) -> str:
    """The printed summary: monitor, both Dice comparisons with verdicts, and the cost of each stage.

    Args:
        results: From :func:`collect_results`.

    Returns:
        Multi-line text.
    """
    lines = [f"VoCo demo, preset {results['preset']!r} ({results['device']}): SYNTHETIC phantom, not patient data",
             f"Dice = nnU-Net's final validation on {len(results['heldout_cases'])} held-out cases (mean over cases), "
             f"per seed; pre-training saw only the unlabelled pool",
             monitor_text(results["pretraining"]["monitor"])]
    for name, a, b in comparisons(tuple(results["dice"])):
        lines += _comparison_lines(results, name, a, b)
    lines.append(closing_text(results))
    budget = results["budget"]
    if budget:
        lines.append(f"Budget (every arm): {budget.get('num_epochs')} epochs x "
                     f"{budget.get('num_iterations_per_epoch')} iterations, batch size {budget.get('batch_size')}; "
                     f"pre-training {results['pretraining']['steps']} steps of "
                     f"{results['pretraining'].get('batch_size', 1)} volume(s)")
    lines += ["Time per stage, from the run that made its outputs (CPU s: all its processes; load: 1-min load",
              f"average at its end on this {os.cpu_count()}-CPU machine; other work on the machine inflates wall s)",
              f"  {'stage':<22} {'wall s':>7} {'CPU s':>7} {'load':>5}  status"]
    wall_total = cpu_total = 0.0
    for key, record in results["stages"].items():
        wall, cpu, load = (record.get(k) for k in ("wall_s", "cpu_s", "load_avg"))
        wall_total, cpu_total = wall_total + (wall or 0.0), cpu_total + (cpu or 0.0)
        status = "reused" if record.get("reused") else "ran"
        lines.append(f"  {key:<22} {_fixed(wall):>7} {_fixed(cpu):>7} {_fixed(load):>5}  {status}")
    lines.append(f"  {'total':<22} {wall_total:>7.1f} {cpu_total:>7.1f} {'':>5}  (runs that made the outputs)")
    return "\n".join(lines)


def _fixed(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def write_report(folders: DemoFolders, state: dict, device: str) -> dict:
    """Prints the table and writes ``results.json``, ``results.txt`` and ``voco_demo.png`` under ``<run>``.

    Args:
        folders: The run size's folders.
        state: From :func:`nnunet_voco.demo.workflow.run_stages`.
        device: Device the run used.

    Returns:
        The results dictionary, with ``figure`` and ``table`` paths added.
    """
    results = collect_results(folders, state, device)
    results["figure"] = plot_demo_figure(folders, results, os.path.join(folders.run, "voco_demo.png"))
    results["table"] = os.path.join(folders.run, "results.txt")
    table = format_table(results)
    print("\n" + table + f"\n{SYNTHETIC_NOTE}\nFigure: {results['figure']}\n"
          f"Results: {os.path.join(folders.run, 'results.json')}", flush=True)
    with open(results["table"], "w", encoding="utf-8") as f:
        f.write(table + "\n")
    with open(os.path.join(folders.run, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    return results
