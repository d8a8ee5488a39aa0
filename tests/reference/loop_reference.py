"""Entry-by-entry loop reference for the VoCo loss, written from the formulas in VOCO_SPEC.md (1.5, 2.4).

One volume, one target crop, one base crop and one base pair at a time, exactly as the equations
read: a test oracle, not a speed reference (it is several times slower than the official codes,
which use tensor operations inside a volume; ``official_structure.py`` follows their structure).
``nnunet_voco.voco.loss.VoCoLoss`` must match it in values and gradients. Logits are ReLU-ed
cosines clamped at 1, as in ``VoCoLoss`` (the clamp only removes rounding above 1).
"""
import torch
import torch.nn.functional as F


def _logit(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ReLU-ed cosine of two embedding vectors, clamped at 1."""
    return torch.clamp(F.cosine_similarity(a, b, dim=0, eps=1e-8), min=0.0, max=1.0)


def _volume_terms(
    y: list[list[torch.Tensor]], l: list[list[torch.Tensor]], neg: str, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative terms of one volume from S x K nested lists of scalars."""
    zero = l[0][0].new_zeros(())
    pos_sum, y_sum, neg_sum, n_zero = zero, zero, zero, 0
    for y_row, l_row in zip(y, l):
        for y_sk, l_sk in zip(y_row, l_row):
            pos_sum = pos_sum + y_sk * torch.log(1.0 - torch.abs(y_sk - l_sk) + eps)
            y_sum = y_sum + y_sk
            if float(y_sk) == 0.0:
                neg_sum = neg_sum + (l_sk**2 if neg == "square" else -torch.log(1.0 - l_sk + eps))
                n_zero += 1
    return -pos_sum / (y_sum + eps), neg_sum / (n_zero + eps)


def _volume_regularizer(bases: torch.Tensor) -> torch.Tensor:
    """Mean over pairs i < j of ReLU(cos(q_i, sg(q_j)))^2 for one volume's (K, D) bases."""
    k = bases.shape[0]
    total, pairs = bases.new_zeros(()), 0
    for i in range(k):
        for j in range(i + 1, k):
            cos = F.cosine_similarity(bases[i], bases[j].detach(), dim=0, eps=1e-8)
            total = total + torch.relu(cos) ** 2
            pairs += 1
    return total / max(pairs, 1)


def loop_reference_loss(
    student_targets: torch.Tensor,
    student_bases: torch.Tensor,
    teacher_targets: torch.Tensor,
    teacher_bases: torch.Tensor,
    overlaps: torch.Tensor,
    preset: str = "v2",
    pos_weight: float = 1.0,
    neg_weight: float = 1.0,
    reg_weight: float = 1.0,
    inter_weight: float = 1.0,
    eps: float = 1e-6,
) -> dict[str, torch.Tensor]:
    """The VoCo loss terms, one entry and one base pair at a time.

    Args:
        student_targets: (B, S, D) student target-crop embeddings.
        student_bases: (B, K, D) student base-crop embeddings.
        teacher_targets: (B, S, D) teacher target-crop embeddings.
        teacher_bases: (B, K, D) teacher base-crop embeddings.
        overlaps: (B, S, K) overlap fractions.
        preset: ``"v1"`` or ``"v2"``.
        pos_weight: Weight of the positive term.
        neg_weight: Weight of the negative term.
        reg_weight: Weight of the regulariser.
        inter_weight: Weight of the inter-volume term (v2 only).
        eps: Added inside the logarithms and to the denominators.

    Returns:
        Scalar tensors ``loss``, ``pos``, ``neg``, ``reg`` and ``inter``.
    """
    n_volumes, n_targets, _ = student_targets.shape
    n_bases = student_bases.shape[1]
    pos_terms, neg_terms, reg_terms, inter_terms = [], [], [], []
    for b in range(n_volumes):
        nb = (b + 1) % n_volumes
        y = [[overlaps[b, s, k] for k in range(n_bases)] for s in range(n_targets)]
        logits, soft, pred = [], [], []
        for s in range(n_targets):
            logits.append([])
            soft.append([])
            pred.append([])
            for k in range(n_bases):
                if preset == "v1":
                    logit = 0.5 * (
                        _logit(student_targets[b, s], teacher_bases[b, k])
                        + _logit(teacher_targets[b, s], student_bases[b, k])
                    )
                else:
                    logit = _logit(student_targets[b, s], teacher_bases[b, k])
                    with torch.no_grad():
                        soft[s].append(_logit(teacher_targets[b, s], teacher_bases[nb, k]))
                    pred[s].append(_logit(student_targets[b, s], student_bases[nb, k]))
                logits[s].append(logit)
        pos, neg = _volume_terms(y, logits, "square" if preset == "v1" else "log", eps)
        pos_terms.append(pos)
        neg_terms.append(neg)
        if preset == "v2":
            inter_pos, inter_neg = _volume_terms(soft, pred, "log", eps)
            inter_terms.append(inter_pos + inter_neg)
        reg_terms.append(_volume_regularizer(student_bases[b]))

    def mean(terms: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(terms).mean()

    pos, neg, reg = mean(pos_terms), mean(neg_terms), mean(reg_terms)
    inter = mean(inter_terms) if preset == "v2" else pos.new_zeros(())
    loss = pos_weight * pos + neg_weight * neg + reg_weight * reg
    if preset == "v2":
        loss = loss + inter_weight * inter
    return {"loss": loss, "pos": pos, "neg": neg, "reg": reg, "inter": inter}
