"""VoCoModel: encoder + projector + EMA teacher + loss, so the loop sees data, a model and a checkpoint.

Presets (DESIGN.md section 4, VOCO_SPEC.md sections 1.5 and 2.3-2.4; their defaults are declared in
:mod:`nnunet_voco.voco.presets`):
    * ``v2`` (default, TPAMI code): one backbone; the student projector sees the (dropped-out)
      embedding, an EMA copy of the projector (teacher) sees the clean embedding under no-grad.
    * ``v1`` (CVPR repo code): an EMA copy of the whole student (backbone and projector) is the
      teacher; logits are symmetrised between student and teacher inside :class:`VoCoLoss`.

Forward pass: target and base crops of all volumes go through the encoder as one batch
``(B * (S + K), C, *crop)``; every stage map is average-pooled and concatenated
(:func:`nnunet_voco.voco.heads.pool_stage_features`), projected, and split back per volume.

Notes:
    * Teachers start as copies of the student (the official code initialises them at random).
    * v2's official feature dropout is ``nn.Dropout1d(0.2)`` on a 2-D ``(N, E)`` matrix, which drops
      whole crop embeddings (rows). We apply element-wise dropout by default; ``row_dropout=True``
      reproduces the official behaviour.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_voco.voco.ema import make_teacher, update_ema
from nnunet_voco.voco.heads import ProjectionHead, pool_stage_features
from nnunet_voco.voco.loss import VoCoLoss
from nnunet_voco.voco.presets import get_preset


class VoCoModel(nn.Module):
    """Student encoder and projector, EMA teacher, and the VoCo loss.

    Args:
        bundle: the encoder, an :class:`nnunet_voco.encoders.bundle.EncoderBundle`. The method uses it
            by its shape only (``module``, ``embedding_dim``), so it imports
            nothing from the encoder wing.
        preset: ``"v2"`` or ``"v1"``.
        loss: the :class:`VoCoLoss` (its preset must match).
        head_dim: hidden and output width of the projector (default: the preset's, 1024 / 2048).
        embedding_dropout: dropout probability on the pooled embedding before the student
            projector (v2 only; 0 disables).
        row_dropout: drop whole embeddings as the official v2 code does.

    Raises:
        ValueError: unknown preset or a loss of another preset.
    """

    def __init__(self, bundle, preset: str, loss: VoCoLoss, head_dim: int | None = None,
                 embedding_dropout: float = 0.0, row_dropout: bool = False):
        super().__init__()
        spec = get_preset(preset)
        if loss.preset != preset:
            raise ValueError(f"loss preset {loss.preset!r} does not match model preset {preset!r}")
        head_dim = head_dim or spec.head_dim
        self.preset = preset
        self.encoder = bundle.module
        self.projector = ProjectionHead(bundle.embedding_dim, head_dim, head_dim)
        self.teacher_projector = make_teacher(self.projector)
        self.teacher_encoder = make_teacher(self.encoder) if spec.teacher_encoder else None
        self.embedding_dropout = float(embedding_dropout) if spec.uses_embedding_dropout else 0.0
        self.row_dropout = bool(row_dropout)
        self.loss = loss

    def embed(self, crops: torch.Tensor, encoder: nn.Module | None = None) -> torch.Tensor:
        """Pooled multi-level embedding ``(N, E)`` of crops ``(N, C, *crop)``."""
        return pool_stage_features((encoder or self.encoder)(crops))

    def _dropout(self, emb: torch.Tensor) -> torch.Tensor:
        if not self.training or self.embedding_dropout <= 0:
            return emb
        if self.row_dropout:
            keep = (torch.rand(emb.shape[0], 1, device=emb.device) >= self.embedding_dropout).to(emb.dtype)
            return emb * keep / (1.0 - self.embedding_dropout)
        return F.dropout(emb, self.embedding_dropout, training=True)

    def _embeddings(self, targets: torch.Tensor, bases: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Student and teacher projections, split per volume: ``(st, sb, tt, tb)``.

        All crops pass the encoder as one batch; the student projector sees the (training-mode
        only) dropped-out embedding, the teacher projector the clean one under no-grad.
        """
        b, s, k = targets.shape[0], targets.shape[1], bases.shape[1]
        crops = torch.cat([targets.flatten(0, 1), bases.flatten(0, 1)])  # (B*S + B*K, C, *crop)
        emb = self.embed(crops)
        student = self.projector(self._dropout(emb))
        with torch.no_grad():
            teacher_emb = self.embed(crops, self.teacher_encoder) if self.teacher_encoder is not None else emb.detach()
            teacher = self.teacher_projector(teacher_emb)
        split = [(z[: b * s].view(b, s, -1), z[b * s:].view(b, k, -1)) for z in (student, teacher)]
        return split[0] + split[1]

    def forward(self, targets: torch.Tensor, bases: torch.Tensor, overlaps: torch.Tensor) -> dict[str, torch.Tensor]:
        """VoCo losses and statistics for one batch.

        Shapes:
            targets: ``(B, S, C, *crop)``; bases: ``(B, K, C, *crop)``; overlaps: ``(B, S, K)``.
        """
        return self.loss(*self._embeddings(targets, bases), overlaps)

    @torch.no_grad()
    def position_logits(self, targets: torch.Tensor, bases: torch.Tensor) -> torch.Tensor:
        """Intra-volume logits ``(B, S, K)`` of a batch, in eval mode (no dropout), without gradient.

        The projector's batch norms use batch statistics in eval mode too, so callers should pass
        batches of the training batch's composition (B volumes of S targets and K bases).
        """
        was_training = self.training
        self.eval()
        try:
            return self.loss.position_logits(*self._embeddings(targets, bases))
        finally:
            self.train(was_training)

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """EMA step of the teacher towards the student (projector; also the encoder in v1)."""
        update_ema(self.projector, self.teacher_projector, momentum)
        if self.teacher_encoder is not None:
            update_ema(self.encoder, self.teacher_encoder, momentum)
