"""``progress.png`` of a pre-training run: loss terms and collapse indicators over steps."""
from __future__ import annotations

import os
from typing import Sequence

LOSS_KEYS = ("loss", "pos", "neg", "reg", "inter")
HEALTH_KEYS = ("logit_overlap_mean", "logit_zero_mean", "base_similarity_mean", "embedding_std")


def plot_progress(history: Sequence[dict], path: str) -> None:
    """Write a two-panel figure: loss terms (top) and collapse indicators (bottom).

    A healthy run shows the mean logit where targets overlap bases rising above the mean logit where
    they do not, base-base similarity falling, and a non-zero embedding std (collapse drives all
    logits together and the std towards 0).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    steps = [row["step"] for row in history]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 8), sharex=True)
    for key in LOSS_KEYS:
        if key in history[0]:
            top.plot(steps, [row.get(key, float("nan")) for row in history], label=key)
    top.set_ylabel("loss")
    top.legend(loc="upper right")
    top.set_title("VoCo pre-training")
    for key in HEALTH_KEYS:
        if key in history[0]:
            bottom.plot(steps, [row.get(key, float("nan")) for row in history], label=key)
    bottom.set_xlabel("step")
    bottom.set_ylabel("collapse indicators")
    bottom.legend(loc="upper right")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
