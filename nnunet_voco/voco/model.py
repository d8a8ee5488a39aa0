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

Precision: under autocast only the encoder runs in bf16/fp16. Pooling averages in fp32
(``mean(dtype=float32)``, no full-size copy of the maps), and projector and loss run with autocast
off: near collapse the cosines the loss compares differ in the third decimal, below bf16's 8-bit
mantissa. The official codes run everything under autocast; the extra cost is a few small matrix
products per step.

Notes:
    * Teachers start as copies of the student (the official code initialises them at random).
    * v2's official feature dropout is ``nn.Dropout1d(0.2)`` on a 2-D ``(N, E)`` matrix, which drops
      whole crop embeddings (rows). We apply element-wise dropout by default; ``row_dropout=True``
      reproduces the official behaviour.
    * ``torch.compile`` (:meth:`VoCoModel.compile_encoder`) wraps the student encoder for training
      forwards only, outside the module tree: state dicts never carry ``_orig_mod.``, and the
      eval-mode passes of the held-out monitor (other shapes, no gradient) run eagerly instead of
      triggering recompilations.
    * Under DDP on CUDA both projectors, student and teacher, use SyncBatchNorm
      (:meth:`VoCoModel.convert_sync_batchnorm`), so that targets and predictions are normalised
      over the same (global) batch; converting the student alone made the targets depend on the
      world size. Where no conversion happens (CPU, gloo) both use per-rank statistics.
"""
from __future__ import annotations

import contextlib

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
        self.__dict__["_compiled_encoder"] = None  # not a submodule: state dicts stay free of _orig_mod.

    def compile_encoder(self, compiler=None) -> None:
        """Run the student encoder through ``compiler(self.encoder)`` (default ``torch.compile``) in
        training-mode forwards.

        The compiled wrapper is kept outside the module tree (it shares the encoder's parameters),
        so ``state_dict`` keys, checkpoints and exports are those of the plain encoder, and
        eval-mode passes (:meth:`position_logits`) stay eager.
        """
        self.__dict__["_compiled_encoder"] = (compiler or torch.compile)(self.encoder)

    @property
    def compiled(self) -> bool:
        """True after :meth:`compile_encoder`."""
        return self._compiled_encoder is not None

    def convert_sync_batchnorm(self, process_group=None) -> None:
        """SyncBatchNorm in the student *and* the teacher projector (DDP on CUDA; call before the
        optimiser sees the parameters). The projector norms have no parameters or buffers, so the
        EMA update is unaffected."""
        convert = torch.nn.SyncBatchNorm.convert_sync_batchnorm
        self.projector = convert(self.projector, process_group)
        self.teacher_projector = convert(self.teacher_projector, process_group)

    def _student_encoder(self) -> nn.Module:
        return self._compiled_encoder if self.training and self._compiled_encoder is not None else self.encoder

    def embed(self, crops: torch.Tensor, encoder: nn.Module | None = None) -> torch.Tensor:
        """Pooled multi-level embedding ``(N, E)``, fp32, of crops ``(N, C, *crop)``."""
        maps = (encoder if encoder is not None else self._student_encoder())(crops)
        with full_precision(crops.device):
            return pool_stage_features(maps)

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
        with full_precision(crops.device):
            student = self.projector(self._dropout(emb))
        with torch.no_grad():
            teacher_emb = self.embed(crops, self.teacher_encoder) if self.teacher_encoder is not None else emb.detach()
            with full_precision(crops.device):
                teacher = self.teacher_projector(teacher_emb)
        split = [(z[: b * s].view(b, s, -1), z[b * s:].view(b, k, -1)) for z in (student, teacher)]
        return split[0] + split[1]

    def forward(self, targets: torch.Tensor, bases: torch.Tensor, overlaps: torch.Tensor) -> dict[str, torch.Tensor]:
        """VoCo losses and statistics for one batch.

        Shapes:
            targets: ``(B, S, C, *crop)``; bases: ``(B, K, C, *crop)``; overlaps: ``(B, S, K)``.
        """
        embeddings = self._embeddings(targets, bases)
        with full_precision(targets.device):
            return self.loss(*embeddings, overlaps)

    @torch.no_grad()
    def position_logits(self, targets: torch.Tensor, bases: torch.Tensor) -> torch.Tensor:
        """Intra-volume logits ``(B, S, K)`` of a batch, in eval mode (no dropout), without gradient.

        The projector's batch norms use batch statistics in eval mode too, so callers should pass
        batches of the training batch's composition (B volumes of S targets and K bases).
        """
        was_training = self.training
        self.eval()
        try:
            embeddings = self._embeddings(targets, bases)
            with full_precision(targets.device):
                return self.loss.position_logits(*embeddings)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """EMA step of the teacher towards the student (projector; also the encoder in v1)."""
        update_ema(self.projector, self.teacher_projector, momentum)
        if self.teacher_encoder is not None:
            update_ema(self.encoder, self.teacher_encoder, momentum)


def full_precision(device: torch.device):
    """Autocast off (fp32) for the ops inside, on any device type autocast knows."""
    if device.type not in ("cuda", "cpu", "mps", "xpu"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, enabled=False)
