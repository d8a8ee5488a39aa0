"""Embedding heads of VoCo: multi-level pooling and the projection MLP.

VoCo [0, 1] embeds a crop by global-average-pooling several feature levels of the backbone and
concatenating them (official code: five SwinUNETR levels, 24F channels), then projecting with a
3-layer MLP whose batch norms have no affine parameters.

References:
    [0] VoCo, CVPR 2024, arXiv:2402.17300. [1] VoCo TPAMI extension, arXiv:2410.09890.

Notes:
    The official projector's BatchNorm1d layers always use batch statistics (also in eval). We use
    ``track_running_stats=False`` for the same behaviour. Under DDP on CUDA the run set-up converts
    the student's and the teacher's to SyncBatchNorm so that the statistics cover the global batch;
    on CPU (gloo, where PyTorch's SyncBatchNorm refuses CPU tensors) every rank keeps its own
    statistics in both, as the official DDP code does on GPUs.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def pool_stage_features(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Global-average-pool every feature map and concatenate, accumulating and returning fp32.

    bf16/fp16 maps are averaged with an fp32 result (``mean(dtype=float32)``: no full-size fp32
    copy of the maps), so the embedding keeps fp32 resolution under autocast.

    Shapes:
        maps: ``[(N, C_i, *spatial_i)]`` -> ``(N, sum_i C_i)``.
    """
    return torch.cat([m.flatten(2).mean(dim=2, dtype=torch.float32) for m in maps], dim=1)


class ProjectionHead(nn.Sequential):
    """Linear -> BN -> ReLU -> Linear -> BN -> ReLU -> Linear (BN without affine, batch statistics).

    Args:
        in_dim: embedding length (sum of pooled channels).
        hidden_dim: width of the hidden layers (v1: 2048, v2: 1024 in the official code).
        out_dim: output dimension.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 1024, out_dim: int = 1024):
        def bn() -> nn.BatchNorm1d:
            return nn.BatchNorm1d(hidden_dim, affine=False, track_running_stats=False)

        super().__init__(
            nn.Linear(in_dim, hidden_dim), bn(), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim), bn(), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )
