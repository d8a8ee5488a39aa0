"""VoCo (Volume Contrast) loss: overlap prediction between target crops and base crops.

Papers: VoCo, CVPR 2024 (arXiv:2402.17300) and its TPAMI extension (arXiv:2410.09890); the terms
follow the official codes (VOCO_SPEC.md sections 1.5 and 2.4). Where we deviate from them (logits
capped at 1 with ReLU's gradient, fp32 under autocast, no row dropout here, no Python loops) is
listed in the Notes of :class:`VoCoLoss`.
"""
import torch

from nnunet_voco.voco.loss_terms import (clamped_norms, entry_weights, log_gap, pair_cosines, regularization_term,
                                         shape_constants, straight_through_cap)
from nnunet_voco.voco.loss_v2_function import V2LossFunction
from nnunet_voco.voco.presets import PRESET_NAMES

PRESETS = tuple(sorted(PRESET_NAMES))  # ("v1", "v2"); the presets are declared in nnunet_voco.voco.presets


class VoCoLoss(torch.nn.Module):
    """VoCo loss: predict the overlap of target crops with base crops, and keep the bases apart.

    A volume is covered by a grid of K base crops; S target crops are placed at random and labelled
    with their overlap fractions y (rows sum to 1). The loss asks the ReLU-ed cosine between a target
    embedding and each base embedding to equal the overlap (positive term: y-weighted
    -log(1 - |y - l|), "overlap prediction"), pushes similarities to non-overlapping bases towards 0
    (negative term), and penalises positive cosine between the bases of a volume (regularisation,
    "bases should be distinct"). Preset ``v2`` adds an inter-volume term: the student predicts the
    teacher's similarities between volume i's targets and the bases of volume j = (i + 1) mod B
    (``torch.roll``; with B = 1 a volume is paired with itself).

    - [0] VoCo, CVPR 2024, https://arxiv.org/abs/2402.17300
    - [1] Large-Scale 3D Medical Image Pre-training with Geometric Context Priors (TPAMI),
      https://arxiv.org/abs/2410.09890
    - Reference code: ``v1`` follows Luffy03/VoCo ``models/voco_head.py``; ``v2`` follows
      Luffy03/Large-Scale-Medical ``Self-supervised/models/voco_head.py`` (repository HEAD as studied
      in VOCO_SPEC.md sections 1.5 and 2.4; no commit pinned).

    Examples:
        >>> loss_fn = VoCoLoss(preset="v2")
        >>> x_s, x_t = torch.randn(2, 4, 64, requires_grad=True), torch.randn(2, 4, 64)
        >>> q_s, q_t = torch.randn(2, 9, 64, requires_grad=True), torch.randn(2, 9, 64)
        >>> overlaps = torch.softmax(torch.randn(2, 4, 9), dim=-1)
        >>> out = loss_fn(x_s, q_s, x_t, q_t, overlaps)
        >>> out["loss"].backward()

    Args:
        preset: ``"v2"`` (default, TPAMI code) or ``"v1"`` (CVPR repository code).
        pos_weight: Weight of the positive prediction term.
        neg_weight: Weight of the negative prediction term.
        reg_weight: Weight of the regularisation term.
        inter_weight: Weight of the inter-volume term (``v2`` only; ignored by ``v1``).
        eps: Added inside the logarithms and to the denominators, as in both reference codes.

    Raises:
        ValueError: If ``preset`` is not one of ``PRESETS``.

    Notes:
        - Both presets follow the reference code, not the method as written in [0] (no teacher,
          stop-gradient bases), which is not implemented.
        - ``v1`` logits are the symmetrised mean of ReLU(cos(x^s, q^t)) and ReLU(cos(x^t, q^s)) and
          its negative term is l^2; ``v2`` uses ReLU(cos(x^s, q^t)) and -log(1 - l + eps).
        - Logit values are capped at 1 (the reference codes apply ReLU only); the cap changes only
          cosines rounded above 1, and it is straight-through: the gradient is ReLU's everywhere
          (a plain ``clamp(0, 1)`` blocks it for rounded-up cosines: with near-collapsed float32
          embeddings 47-58 % of cosines round to >= 1 and a hard clamp kept 54-62 % of the float64
          gradient norm, ``benchmarks/clamp_gradient.py``). ``eps`` is added, not used as a clamp, as
          in the code.
        - All terms are computed in at least float32 with autocast disabled: half-precision inputs are
          cast up, float64 inputs are kept.
        - The v2 code applies Dropout1d to a 2-D matrix, which drops whole embeddings. That belongs to
          the model and is not applied here.
        - The regulariser squares ReLU(cos), as both reference codes do (two bases 60 degrees apart
          give 0.25); an unsquared variant would give 0.5.
        - The teacher tensors are used as passed; the caller produces them without gradient. Only the
          inter-volume soft target is computed under ``no_grad`` here.
        - Computation (same values as the per-volume formulas; the official codes loop over volumes
          and base pairs in Python): cosines are Gram matrices divided by the row norms; v2's intra-
          and inter-volume logits come from one matmul against ``[q^t_i, q^s_(i+1)]``; every
          prediction term is one weighted sum over entries with weights built without gradient; the
          per-shape masks and weights are cached per (K, B, weights, device, dtype). A call issues no
          host synchronisation and no Python loop over volumes, crops or pairs.
        - v2's gradient is written out (:class:`V2LossFunction`, one autograd node; at the official sizes the
          cost of this loss is the count of small operations, not arithmetic); v1 uses autograd. The
          overlaps receive no gradient in v2 (they are data), and v2 supports no double backward.
    """

    def __init__(
        self,
        preset: str = "v2",
        pos_weight: float = 1.0,
        neg_weight: float = 1.0,
        reg_weight: float = 1.0,
        inter_weight: float = 1.0,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if preset not in PRESETS:
            raise ValueError(f"unknown VoCo loss preset {preset!r}; expected one of {PRESETS}")
        self.preset = preset
        self.pos_weight = pos_weight
        self.neg_weight = neg_weight
        self.reg_weight = reg_weight
        self.inter_weight = inter_weight
        self.eps = eps

    @torch.no_grad()
    def position_logits(self, student_targets: torch.Tensor, student_bases: torch.Tensor,
                        teacher_targets: torch.Tensor, teacher_bases: torch.Tensor) -> torch.Tensor:
        """The intra-volume logits the prediction term trains, ``(B, S, K)``, without gradient.

        v2: ReLU(cos(student target, teacher base)); v1: their mean with ReLU(cos(teacher target,
        student base)). The held-out position monitor (:mod:`nnunet_voco.voco.monitor`) reads these.
        """
        x_s, q_s, x_t, q_t = (t.float() for t in (student_targets, student_bases, teacher_targets, teacher_bases))
        norms = tuple(clamped_norms(t) for t in (x_s, q_s, x_t, q_t))
        return intra_logits(self.preset == "v1", x_s, q_s, x_t, q_t, *norms)

    def forward(
        self,
        student_targets: torch.Tensor,
        student_bases: torch.Tensor,
        teacher_targets: torch.Tensor,
        teacher_bases: torch.Tensor,
        overlaps: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Computes the loss terms and detached collapse statistics.

        Args:
            student_targets: Student embeddings of the target crops.
            student_bases: Student embeddings of the base crops.
            teacher_targets: Teacher embeddings of the target crops.
            teacher_bases: Teacher embeddings of the base crops.
            overlaps: Overlap fraction of each target crop with each base crop.

        Returns:
            Scalar tensors ``loss`` (weighted total), ``pos``, ``neg``, ``reg``, ``inter`` (0 for
            ``v1``) and the detached statistics ``logit_overlap_mean``, ``logit_zero_mean``,
            ``base_similarity_mean`` and ``embedding_std``. The logit means use the intra-volume
            logits; ``logit_zero_mean`` is 0 when no overlap is 0. ``base_similarity_mean`` averages
            the off-diagonal cosines of each volume's student bases. ``embedding_std`` is the
            population std over all student target and base rows of the normalised embeddings,
            averaged over dimensions (about 1/sqrt(D) when spread, 0 when collapsed).

        Shapes:
            student_targets, teacher_targets: (B, S, D); student_bases, teacher_bases: (B, K, D);
            overlaps: (B, S, K).
        """
        inputs = (student_targets, student_bases, teacher_targets, teacher_bases, overlaps)
        # Half-precision cosines and logs near 1 lose the signal, so compute in >= float32.
        x_s, q_s, x_t, q_t, y = (t.to(torch.promote_types(t.dtype, torch.float32)) for t in inputs)
        weights = (self.pos_weight, self.neg_weight, self.reg_weight, self.inter_weight)
        pairs, off_diagonal, term_weights = shape_constants(q_s.shape[1], q_s.shape[0], weights, x_s.device, x_s.dtype)
        with torch.autocast(device_type=x_s.device.type, enabled=False):
            if self.preset == "v1":
                out, logits, gram, n_xs, n_qs = self._v1_terms(x_s, q_s, x_t, q_t, y, pairs)
            else:
                loss, terms, reg, logits, gram, n_xs, n_qs = V2LossFunction.apply(x_s, q_s, x_t, q_t, y, term_weights, pairs,
                                                                         self.reg_weight, self.eps)
                out = {"loss": loss, "pos": terms[0, 0], "neg": terms[1, 0], "reg": reg, "inter": terms[:, 1].sum()}
            out.update(_statistics(logits.detach(), y, x_s, q_s, n_xs, n_qs, gram.detach(), off_diagonal))
        return out

    def _v1_terms(self, x_s: torch.Tensor, q_s: torch.Tensor, x_t: torch.Tensor, q_t: torch.Tensor,
                  y: torch.Tensor, pairs: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, ...]:
        """v1 terms (symmetrised logits, l^2 negatives, regulariser) by autograd; also returns the
        intra-volume logits (B, S, K), the base cosines (B, K, K) and the student row norms."""
        n_xs, n_qs, n_xt, n_qt = (clamped_norms(t) for t in (x_s, q_s, x_t, q_t))
        logits = intra_logits(True, x_s, q_s, x_t, q_t, n_xs, n_qs, n_xt, n_qt)
        entry = entry_weights(y, (1, 2), self.eps)  # (2, B, S, K)
        pos = (log_gap(y, logits, self.eps) * entry[0].neg_()).sum()
        neg = (logits.square() * entry[1]).sum()
        reg, gram = regularization_term(q_s, n_qs, pairs)
        loss = self.pos_weight * pos + self.neg_weight * neg + self.reg_weight * reg
        out = {"loss": loss, "pos": pos, "neg": neg, "reg": reg, "inter": torch.zeros_like(pos)}
        return out, logits, gram, n_xs, n_qs


def intra_logits(symmetric: bool, x_s: torch.Tensor, q_s: torch.Tensor, x_t: torch.Tensor, q_t: torch.Tensor,
                 n_xs: torch.Tensor, n_qs: torch.Tensor, n_xt: torch.Tensor, n_qt: torch.Tensor) -> torch.Tensor:
    """Intra-volume logits (B, S, K) from the embeddings and their clamped row norms.

    ``symmetric`` (v1): 0.5 * (cap(cos(x^s, q^t)) + cap(cos(x^t, q^s))); otherwise (v2) cap(cos(x^s, q^t)),
    whose training values :class:`V2LossFunction` computes itself. One definition, so the held-out
    monitor reads the logits training uses.
    """
    student = straight_through_cap(pair_cosines(x_s, q_t, n_xs, n_qt))
    if symmetric:
        return 0.5 * (student + straight_through_cap(pair_cosines(x_t, q_s, n_xt, n_qs)))
    return student


@torch.no_grad()
def _statistics(logits: torch.Tensor, overlaps: torch.Tensor, targets: torch.Tensor, bases: torch.Tensor,
                target_norms: torch.Tensor, base_norms: torch.Tensor, gram: torch.Tensor, off_diagonal: torch.Tensor
                ) -> dict[str, torch.Tensor]:
    """Collapse indicators from logits, overlaps, student embeddings with their norms, and base cosines."""
    masks = torch.stack([overlaps > 0, overlaps == 0]).to(logits.dtype)  # (2, B, S, K)
    # clamp_min(1) gives 0 instead of nan when a set is empty, without a host sync.
    means = (masks * logits).sum((1, 2, 3)) / masks.sum((1, 2, 3)).clamp_min(1.0)
    rows = torch.cat([targets, bases], dim=1) / torch.cat([target_norms, base_norms], dim=1).unsqueeze(2)
    rows = rows.flatten(0, 1)  # (B*(S+K), D), normalised
    # Two-pass population std over rows (torch.std over dim 0 costs about 6x as much here).
    spread = (rows - rows.mean(0)).square().mean(0).sqrt()
    return {
        "logit_overlap_mean": means[0],
        "logit_zero_mean": means[1],
        "base_similarity_mean": (gram * off_diagonal).sum(),
        # SimSiam's indicator: about 1/sqrt(D) for spread embeddings, 0 when collapsed.
        "embedding_std": spread.mean(),
    }
