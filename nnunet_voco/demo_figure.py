"""The figure of ``voco_demo``: a held-out slice with ground truth and both predictions, and the
pre-training loss curves from ``metrics.jsonl``.
"""
from __future__ import annotations

import os

import numpy as np

from nnunet_voco.demo_report import ARMS, CLASS_NAMES, LOSS_TERMS, read_metrics
from nnunet_voco.demo_stages import DemoFolders

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


def _plot_losses(ax, rows: list[dict], steps: int) -> None:
    if not rows:
        ax.text(0.5, 0.5, "no metrics.jsonl found", ha="center", va="center", transform=ax.transAxes)
        return
    x = [r["step"] for r in rows]
    for term in LOSS_TERMS:
        if term in rows[0]:
            ax.plot(x, [r[term] for r in rows], label="total" if term == "loss" else term,
                    linewidth=2.0 if term == "loss" else 1.0)
    ax.set_xlabel("pre-training step")
    ax.set_ylabel("VoCo loss")
    ax.set_title(f"VoCo pre-training losses (metrics.jsonl, {steps} steps)", fontsize=9)
    ax.legend(fontsize=8, ncol=len(LOSS_TERMS), loc="upper right")
    ax.grid(alpha=0.3)


def plot_demo_figure(folders: DemoFolders, results: dict, path: str) -> str:
    """Draws the demo figure and saves it as a PNG.

    Top row: one axial slice of the first held-out case (the slice with the most classes) as CT,
    with the ground truth, the VoCo-pretrained and the scratch prediction overlaid (titles give the
    case's mean Dice). Bottom: the pre-training loss terms over the steps.

    Args:
        folders: The preset's folders.
        results: From :func:`nnunet_voco.demo_report.collect_results`.
        path: Output PNG file.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    case = folders.test_ids()[0]
    image = _read(os.path.join(folders.raw_dataset, "imagesTs", f"{case}_0000.nii.gz"))
    truth = _read(os.path.join(folders.raw_dataset, "labelsTs", f"{case}.nii.gz"))
    z = pick_slice(truth)
    fig = plt.figure(figsize=(12, 6.6), dpi=110)
    grid = fig.add_gridspec(2, 4, height_ratios=(1.25, 0.75), hspace=0.35, top=0.9, bottom=0.08, left=0.06,
                            right=0.98, wspace=0.05)
    _overlay(fig.add_subplot(grid[0, 0]), image[z], None, f"held-out {case}, slice z={z}")
    _overlay(fig.add_subplot(grid[0, 1]), image[z], truth[z], "ground truth")
    for col, (arm, name) in enumerate(ARMS.items(), start=2):
        prediction = _read(os.path.join(folders.predictions(arm), f"{case}.nii.gz"))
        dice = results["dice"][arm]["per_case"].get(case)
        _overlay(fig.add_subplot(grid[0, col]), image[z], prediction[z],
                 f"{name}: mean Dice {'n/a' if dice is None else f'{dice:.3f}'}")
    fig.legend(handles=[Patch(color=c, label=n) for c, n in zip(_COLOURS, CLASS_NAMES.values())],
               loc="center", bbox_to_anchor=(0.5, 0.415), ncol=len(_COLOURS), fontsize=9, frameon=False)
    _plot_losses(fig.add_subplot(grid[1, :]), read_metrics(folders.pretrain_folder), folders.preset.pretrain_steps)
    fig.suptitle(f"voco_demo ({folders.preset.name}): SYNTHETIC CT-like phantom, not patient data", fontsize=11)
    fig.savefig(path)
    plt.close(fig)
    return path
