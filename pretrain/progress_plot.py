"""``progress.png`` of a pre-training run: loss terms, collapse indicators and the held-out monitor."""
from __future__ import annotations

import os
from typing import Sequence

LOSS_KEYS = ("loss", "pos", "neg", "reg", "inter")
HEALTH_KEYS = ("logit_overlap_mean", "logit_zero_mean", "base_similarity_mean", "embedding_std")


def plot_progress(history: Sequence[dict], path: str) -> None:
    """Write the figure: loss terms, collapse indicators and (when held out) the position monitor.

    A healthy run shows the mean logit where targets overlap bases rising above the mean logit where
    they do not, base-base similarity falling, a non-zero embedding std (collapse drives all
    logits together and the std towards 0), and the held-out position accuracy rising above its
    step-0 value (the v2 total loss can rise meanwhile: its inter-volume target moves).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [row for row in history if "loss" in row]
    held_out = [row for row in history if "val_position_accuracy" in row]
    if not train and not held_out:
        return
    panels = 3 if held_out else 2
    fig, axes = plt.subplots(panels, 1, figsize=(9, 4 * panels), sharex=True)
    top, bottom = axes[0], axes[1]
    steps = [row["step"] for row in train]
    for key in LOSS_KEYS:
        if train and key in train[0]:
            top.plot(steps, [row.get(key, float("nan")) for row in train], label=key)
    top.set_ylabel("loss")
    top.set_title("VoCo pre-training")
    for key in HEALTH_KEYS:
        if train and key in train[0]:
            bottom.plot(steps, [row.get(key, float("nan")) for row in train], label=key)
    bottom.set_ylabel("collapse indicators")
    if held_out:
        ax = axes[2]
        val_steps = [row["step"] for row in held_out]
        ax.plot(val_steps, [row["val_position_accuracy"] for row in held_out], "o-", label="held-out position accuracy")
        if "train_position_accuracy" in held_out[-1]:
            ax.plot(val_steps, [row.get("train_position_accuracy", float("nan")) for row in held_out], "^-",
                    color="tab:green", alpha=0.7, label="training-window position accuracy")
        ax.plot(val_steps, [row["val_logit_gap"] for row in held_out], "s--", label="held-out logit gap")
        ax.axhline(held_out[0]["val_position_accuracy"], color="grey", ls=":", label="step 0 (untrained)")
        ax.axhline(held_out[-1]["val_prior"], color="tab:red", ls=":", label="best constant guess")
        ax.axhline(held_out[-1]["val_chance"], color="black", ls=":", label="chance (1/K)")
        ax.set_ylabel("position monitor")
        ax.set_ylim(bottom=min(0.0, min(row["val_logit_gap"] for row in held_out)))
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
