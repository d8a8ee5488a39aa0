"""VoCo (Volume Contrast) loss: overlap prediction between target crops and base crops."""
import torch

PRESETS = ("v1", "v2")


def _normalise(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """L2-normalises the last axis, dividing by ``max(||x||, eps)``."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def _logits(targets: torch.Tensor, bases: torch.Tensor) -> torch.Tensor:
    """ReLU-ed cosines of normalised embeddings per volume: (B,S,D), (B,K,D) -> (B,S,K)."""
    # Values are capped at 1 (float32 cosines of near-identical embeddings round to >= 1, and
    # log(1 - l + eps) must stay finite), but the gradient is ReLU's: a hard clamp would pass none
    # for every rounded-up cosine, which is the near-collapsed state where a run needs it most.
    relu = torch.bmm(targets, bases.transpose(1, 2)).relu()
    return relu - (relu - relu.clamp_max(1.0)).detach()


def _prediction_terms(
    targets: torch.Tensor, logits: torch.Tensor, neg: str, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative prediction terms, each averaged over volumes.

    Args:
        targets: Overlaps or soft targets y in [0, 1]; entries equal to 0 define the negatives.
        logits: Predicted similarities l in [0, 1], same shape as ``targets``.
        neg: ``"square"`` for the mean of l^2 (v1 code) or ``"log"`` for the mean of -log(1 - l) (v2 code).
        eps: Added inside the logarithms and to the denominators.

    Returns:
        ``(pos, neg)`` scalar tensors.

    Shapes:
        targets, logits: (B, S, K).
    """
    pos = -(targets * torch.log(1.0 - (targets - logits).abs() + eps)).sum((1, 2))
    pos = pos / (targets.sum((1, 2)) + eps)
    zeros = (targets == 0).to(logits.dtype)
    per_entry = logits.square() if neg == "square" else -torch.log(1.0 - logits + eps)
    negative = (zeros * per_entry).sum((1, 2)) / (zeros.sum((1, 2)) + eps)
    return pos.mean(), negative.mean()


def _regularization_term(normed: torch.Tensor) -> torch.Tensor:
    """Mean squared positive cosine over base pairs i < j, with the gradient reaching base i only.

    Args:
        normed: L2-normalised student base-crop embeddings, shape (B, K, D).

    Returns:
        Scalar tensor, averaged over pairs and volumes (0 when K < 2).
    """
    # Stop-gradient on the second factor: for the pair (i, j) only row i receives gradient.
    gram = torch.bmm(normed, normed.detach().transpose(1, 2))  # (B, K, K)
    k = normed.shape[1]
    upper = torch.ones(k, k, dtype=torch.bool, device=normed.device).triu(diagonal=1)
    per_volume = gram.relu().square().masked_fill(~upper, 0.0).sum((1, 2)) / max(k * (k - 1) // 2, 1)
    return per_volume.mean()


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
          embeddings 56-78 % of cosines round to >= 1 and a hard clamp kept 29-86 % of the float64
          gradient norm). ``eps`` is added, not used as a clamp, as in the code.
        - All terms are computed in at least float32 with autocast disabled: half-precision inputs are
          cast up, float64 inputs are kept.
        - The v2 code applies Dropout1d to a 2-D matrix, which drops whole embeddings. That belongs to
          the model and is not applied here.
        - The regulariser squares ReLU(cos), as both reference codes do (two bases 60 degrees apart
          give 0.25); an unsquared variant would give 0.5.
        - The teacher tensors are used as passed; the caller produces them without gradient. Only the
          inter-volume soft target is computed under ``no_grad`` here.
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
        x_s, q_s, x_t, q_t = (_normalise(t.float()) for t in (student_targets, student_bases, teacher_targets,
                                                               teacher_bases))
        if self.preset == "v1":
            return 0.5 * (_logits(x_s, q_t) + _logits(x_t, q_s))
        return _logits(x_s, q_t)

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
        with torch.autocast(device_type=x_s.device.type, enabled=False):
            x_s, q_s, x_t, q_t = (_normalise(t) for t in (x_s, q_s, x_t, q_t))
            zero = torch.zeros((), dtype=x_s.dtype, device=x_s.device)
            if self.preset == "v1":
                logits = 0.5 * (_logits(x_s, q_t) + _logits(x_t, q_s))  # (B, S, K)
                pos, neg = _prediction_terms(y, logits, "square", self.eps)
                inter = zero
            else:
                logits = _logits(x_s, q_t)  # (B, S, K)
                pos, neg = _prediction_terms(y, logits, "log", self.eps)
                q_s_next, q_t_next = q_s.roll(-1, dims=0), q_t.roll(-1, dims=0)  # volume (i + 1) mod B
                with torch.no_grad():
                    soft = _logits(x_t, q_t_next)
                inter_pos, inter_neg = _prediction_terms(soft, _logits(x_s, q_s_next), "log", self.eps)
                inter = inter_pos + inter_neg
            reg = _regularization_term(q_s)
            loss = self.pos_weight * pos + self.neg_weight * neg + self.reg_weight * reg
            if self.preset == "v2":
                loss = loss + self.inter_weight * inter
            out = {"loss": loss, "pos": pos, "neg": neg, "reg": reg, "inter": inter}
            out.update(_statistics(logits.detach(), y, x_s.detach(), q_s.detach()))
        return out


@torch.no_grad()
def _statistics(
    logits: torch.Tensor, overlaps: torch.Tensor, targets: torch.Tensor, bases: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Collapse indicators from logits, overlaps and normalised student embeddings."""
    on = (overlaps > 0).to(logits.dtype)
    off = 1.0 - on
    gram = torch.bmm(bases, bases.transpose(1, 2))  # (B, K, K)
    k = bases.shape[1]
    off_diagonal = gram.sum((1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(1)
    embeddings = torch.cat([targets.flatten(0, 1), bases.flatten(0, 1)])  # (B*(S+K), D)
    return {
        # clamp_min(1) gives 0 instead of nan when a set is empty, without a host sync.
        "logit_overlap_mean": (logits * on).sum() / on.sum().clamp_min(1.0),
        "logit_zero_mean": (logits * off).sum() / off.sum().clamp_min(1.0),
        "base_similarity_mean": (off_diagonal / max(k * (k - 1), 1)).mean(),
        # SimSiam's indicator: about 1/sqrt(D) for spread embeddings, 0 when collapsed.
        "embedding_std": embeddings.std(dim=0, correction=0).mean(),
    }
