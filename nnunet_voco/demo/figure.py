"""The figure of ``voco_demo``: the held-out position accuracy of pre-training over its steps, the
loss curves, and one held-out slice with the ground truth and every arm's prediction (first seed).

matplotlib and SimpleITK are imported only while drawing, so importing this module is cheap.
"""
from __future__ import annotations

import os

import numpy as np

from nnunet_voco.demo.arms import ARMS
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
            label="held-out position accuracy")
    for key, style, label in (("val_chance", ":", "chance (1/K)"), ("val_prior", "--", "best constant guess")):
        if key in monitor[-1]:
            ax.axhline(monitor[-1][key], linestyle=style, color="grey", label=label)
    ax.set_xlabel("pre-training step")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0.0, 1.0)
    ax.set_title("VoCo pretext task on held-out pool cases (metrics.jsonl)", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
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
    ax.legend(fontsize=7, ncol=len(LOSS_TERMS), loc="upper right")
    ax.grid(alpha=0.3)


def plot_demo_figure(folders: DemoFolders, results: dict, path: str) -> str:
    """Draws the demo figure and saves it as a PNG.

    Top: the held-out position accuracy over the pre-training steps (with chance and the best
    constant guess) and the loss terms. Bottom: one axial slice of the first held-out case (the slice
    with the most classes) with the ground truth and each arm's prediction of the first seed, read
    from nnU-Net's ``fold_SEED/validation`` (titles give that case's mean Dice).

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
    fig = plt.figure(figsize=(13, 7.2), dpi=100)
    grid = fig.add_gridspec(2, 5, height_ratios=(0.85, 1.0), hspace=0.3, top=0.91, bottom=0.08, left=0.05,
                            right=0.98, wspace=0.08)
    _plot_monitor(fig.add_subplot(grid[0, :3]), results["pretraining"]["monitor"])
    _plot_losses(fig.add_subplot(grid[0, 3:]), read_metrics(folders.pretrain_folder))
    _overlay(fig.add_subplot(grid[1, 0]), image[z], truth[z], f"held-out {case}\nslice z={z}: ground truth")
    for col, (arm, (_, label)) in enumerate(ARMS.items(), start=1):
        prediction_path = os.path.join(folders.fold_folder(arm, seed), "validation", f"{case}.nii.gz")
        ax = fig.add_subplot(grid[1, col])
        if not os.path.isfile(prediction_path):
            _overlay(ax, image[z], None, f"{label}\nno prediction")
            continue
        run = results["dice"][arm]["runs"].get(str(seed)) or {}
        dice = (run.get("per_case") or {}).get(case)
        _overlay(ax, image[z], _read(prediction_path)[z],
                 f"{label}\nseed {seed}: mean Dice {'n/a' if dice is None else f'{dice:.3f}'}")
    fig.legend(handles=[Patch(color=c, label=n) for c, n in zip(_COLOURS, CLASS_NAMES.values())],
               loc="lower center", ncol=len(_COLOURS), fontsize=9, frameon=False)
    fig.suptitle(f"voco_demo ({folders.run_size.name}): SYNTHETIC CT-like phantom, not patient data", fontsize=11)
    fig.savefig(path)
    plt.close(fig)
    return path
