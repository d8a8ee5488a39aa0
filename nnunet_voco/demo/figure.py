"""The figure of ``voco_demo``: the position accuracy of pre-training over its steps, the loss curves,
the Dice of every arm and seed, and one held-out slice with the ground truth and every arm's
prediction (first seed).

matplotlib and SimpleITK are imported only while drawing, so importing this module is cheap.
"""
from __future__ import annotations

import os

import numpy as np

from nnunet_voco.demo.arms import ARMS, PRETRAINED_ARMS
from nnunet_voco.demo.folders import DemoFolders
from nnunet_voco.demo.results import CLASS_NAMES, LOSS_TERMS, read_metrics

_COLOURS = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8")  # liver, spleen, kidneys, spine
_WINDOW_HU = (-250.0, 450.0)  # soft tissue to bone, so organs and vertebrae both read


def _read(path: str) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(path))  # (z, y, x)


def pick_slice(label: np.ndarray) -> int:
    """Index of the axial slice showing the most classes (ties: the most labelled voxels).

    Args:
        label: Label map, shape (z, y, x).

    Returns:
        The z index.
    """
    scores = [(len(np.unique(s[s > 0])), int((s > 0).sum())) for s in label]
    return int(max(range(len(scores)), key=lambda z: scores[z]))


def _overlay(ax, image: np.ndarray, label: np.ndarray | None, title: str) -> None:
    from matplotlib.colors import ListedColormap

    ax.imshow(image, cmap="gray", vmin=_WINDOW_HU[0], vmax=_WINDOW_HU[1], interpolation="nearest")
    if label is not None:
        masked = np.ma.masked_equal(label, 0)
        ax.imshow(masked, cmap=ListedColormap(_COLOURS), vmin=1, vmax=len(_COLOURS), alpha=0.55,
                  interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def _plot_monitor(ax, monitor: list[dict]) -> None:
    if not monitor:
        ax.text(0.5, 0.5, "no held-out monitor rows in metrics.jsonl", ha="center", va="center", transform=ax.transAxes)
        return
    x = [r["step"] for r in monitor]
    ax.plot(x, [r["val_position_accuracy"] for r in monitor], marker="o", linewidth=2.0,
            label="held-out cases")
    if "train_position_accuracy" in monitor[-1]:
        ax.plot(x, [r.get("train_position_accuracy", float("nan")) for r in monitor], marker="^", linewidth=1.2,
                alpha=0.8, label="training cases")
    # reference lines are labelled at their right end, not in the legend, so that nothing covers them
    for key, style, text in (("val_prior", "--", "best constant guess"), ("val_chance", ":", "chance (1/K)")):
        if key in monitor[-1]:
            ax.axhline(monitor[-1][key], linestyle=style, color="grey", linewidth=1.0)
            ax.annotate(text, (1.0, monitor[-1][key]), xycoords=("axes fraction", "data"), xytext=(-3, 3),
                        textcoords="offset points", ha="right", va="bottom", fontsize=7, color="dimgrey")
    ax.set_xlabel("pre-training step")
    ax.set_ylabel("position accuracy")
    ax.set_ylim(0.0, 1.0)
    ax.set_title("VoCo pretext: which base crop a target overlaps most\n(fixed windows, no augmentation)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", frameon=False)
    ax.grid(alpha=0.3)


def _plot_losses(ax, rows: list[dict]) -> None:
    rows = [r for r in rows if "loss" in r]
    if not rows:
        ax.text(0.5, 0.5, "no loss rows in metrics.jsonl", ha="center", va="center", transform=ax.transAxes)
        return
    x = [r["step"] for r in rows]
    for term in LOSS_TERMS:
        if term in rows[0]:
            ax.plot(x, [r[term] for r in rows], label="total" if term == "loss" else term,
                    linewidth=2.0 if term == "loss" else 1.0)
    ax.set_xlabel("pre-training step")
    ax.set_ylabel("VoCo loss")
    ax.set_title("VoCo pre-training losses", fontsize=9)
    ax.text(0.02, 0.02, "the v2 total loss can rise while the encoder learns:\nits inter-volume target is the "
            "teacher's moving output", transform=ax.transAxes, fontsize=7, va="bottom", color="dimgrey")
    ax.legend(fontsize=7, ncol=3, loc="upper right", frameon=False)
    ax.grid(alpha=0.3)


def _plot_dice(ax, results: dict) -> None:
    """Mean Dice per arm: one dot per seed and a bar at the mean over seeds (the table's values)."""
    arms = list(results["dice"])
    for i, arm in enumerate(arms):
        stats = results["dice"][arm]["mean"]
        values = [v for v in stats["per_seed"] if v is not None]
        if stats["mean"] is not None:
            ax.bar(i, stats["mean"], width=0.6, color="#4363d8" if arm in PRETRAINED_ARMS else "#a9a9a9", alpha=0.5)
        ax.scatter([i] * len(values), values, color="black", s=14, zorder=3)
    ax.set_xticks(range(len(arms)))
    ax.set_xticklabels([ARMS[a][1].replace(" ", "\n", 1) for a in arms], fontsize=7)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("mean Dice over 4 classes")
    ax.set_title(f"Dice on {len(results['heldout_cases'])} held-out cases:\nbar = mean over seeds, dot = one seed",
                 fontsize=9)
    ax.grid(alpha=0.3, axis="y")


def plot_demo_figure(folders: DemoFolders, results: dict, path: str) -> str:
    """Draws the demo figure and saves it as a PNG.

    Top: the position accuracy over the pre-training steps on held-out and on training cases (with
    chance and the best constant guess), the loss terms, and every arm's mean Dice per seed and over
    seeds. Bottom: one axial slice of the first held-out case (the slice with the most classes) with
    the ground truth and each arm's prediction of the first seed, read from nnU-Net's
    ``fold_SEED/validation`` (titles give that one case's mean Dice, not the table's).

    Args:
        folders: The run size's folders.
        results: From :func:`nnunet_voco.demo.report.collect_results`.
        path: Output PNG file.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    case, seed = folders.heldout_ids()[0], folders.run_size.seeds[0]
    image = _read(os.path.join(folders.raw_dataset, "imagesTr", f"{case}_0000.nii.gz"))
    truth = _read(os.path.join(folders.raw_dataset, "labelsTr", f"{case}.nii.gz"))
    z = pick_slice(truth)
    arms = folders.run_size.arms
    fig = plt.figure(figsize=(15, 8.4), dpi=100)
    top = fig.add_gridspec(1, 3, top=0.90, bottom=0.56, left=0.05, right=0.98, wspace=0.28)
    bottom = fig.add_gridspec(1, len(arms) + 1, top=0.44, bottom=0.07, left=0.03, right=0.98, wspace=0.06)
    _plot_monitor(fig.add_subplot(top[0, 0]), results["pretraining"]["monitor"])
    _plot_losses(fig.add_subplot(top[0, 1]), read_metrics(folders.pretrain_folder))
    _plot_dice(fig.add_subplot(top[0, 2]), results)
    _overlay(fig.add_subplot(bottom[0, 0]), image[z], truth[z], f"held-out case {case}\nslice z={z}: ground truth")
    for col, arm in enumerate(arms, start=1):
        label = ARMS[arm][1]
        prediction_path = os.path.join(folders.fold_folder(arm, seed), "validation", f"{case}.nii.gz")
        ax = fig.add_subplot(bottom[0, col])
        if not os.path.isfile(prediction_path):
            _overlay(ax, image[z], None, f"{label}\nno prediction")
            continue
        run = results["dice"][arm]["runs"].get(str(seed)) or {}
        dice = (run.get("per_case") or {}).get(case)
        _overlay(ax, image[z], _read(prediction_path)[z],
                 f"{label}, seed {seed}\nthis case's mean Dice {'n/a' if dice is None else f'{dice:.3f}'}")
    fig.legend(handles=[Patch(color=c, label=n) for c, n in zip(_COLOURS, CLASS_NAMES.values())],
               loc="lower center", ncol=len(_COLOURS), fontsize=9, frameon=False, bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(f"voco_demo ({folders.run_size.name}): SYNTHETIC CT-like phantom, not patient data", fontsize=11)
    fig.savefig(path)
    plt.close(fig)
    return path
