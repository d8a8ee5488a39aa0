"""The two VoCo presets, declared once: every default that depends on ``--preset``.

``v2`` (the default) follows the TPAMI code [1] (Luffy03/Large-Scale-Medical ``Self-supervised``),
``v1`` the CVPR repository code [0] (Luffy03/VoCo); VOCO_SPEC.md sections 1.4-1.5, 2.2-2.3 and 2.7
list where each number comes from:

========================  ==========  ==========  =========================================
value                     v2          v1          source
========================  ==========  ==========  =========================================
projector width           1024        2048        24F->1024->1024->1024 / 24F->2048->2048->2048
EMA teacher               projector   backbone    v2: one backbone, EMA copy of the projector;
                          only        + projector v1: EMA copy of the whole student
embedding dropout         0.2         none        v2 ``Dropout1d(0.2)`` before the student
                                                  projector; v1 has no dropout
intensity-shift prob.     0.5         0.1         per-crop shift of +-0.1 (both codes)
========================  ==========  ==========  =========================================

The loss terms that differ between the presets (logits, negatives, the inter-volume term) are the
loss's own business (:mod:`nnunet_voco.voco.loss`); this module names the presets it accepts.

Notes:
    v2's official dropout drops whole embeddings (``Dropout1d`` on a 2-D matrix); we drop elements
    by default and keep the official behaviour behind ``--row_dropout`` (VOCO_SPEC.md P14), so
    only the probability lives here.

References:
    [0] Wu, Zhang, Xiong, Chen, "VoCo: A Simple-yet-Effective Volume Contrastive Learning Framework
        for 3D Medical Image Analysis", CVPR 2024, arXiv:2402.17300.
    [1] Wu, Zhang, Chen, "Large-Scale 3D Medical Image Pre-training with Geometric Context Priors",
        TPAMI, arXiv:2410.09890.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Preset:
    """The preset-dependent defaults of one VoCo variant."""

    name: str  # the --preset value
    head_dim: int  # projector hidden and output width
    teacher_encoder: bool  # the EMA teacher copies the backbone too (else only the projector)
    embedding_dropout: float  # default probability of dropout on the pooled embedding (0: none in this variant)
    shift_prob: float  # default probability of the per-crop intensity shift

    @property
    def uses_embedding_dropout(self) -> bool:
        """Whether dropout on the pooled embedding exists in this variant."""
        return self.embedding_dropout > 0


V2 = Preset("v2", head_dim=1024, teacher_encoder=False, embedding_dropout=0.2, shift_prob=0.5)
V1 = Preset("v1", head_dim=2048, teacher_encoder=True, embedding_dropout=0.0, shift_prob=0.1)
PRESETS = {p.name: p for p in (V2, V1)}
PRESET_NAMES = tuple(PRESETS)  # ("v2", "v1"): the default first
DEFAULT_PRESET = V2.name


def get_preset(name: str) -> Preset:
    """The :class:`Preset` called ``name``.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown VoCo preset {name!r}; choose one of {', '.join(PRESET_NAMES)}")
    return PRESETS[name]
