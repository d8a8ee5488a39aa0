"""The VoCo loss computed the way the official codes structure it, written by us from VOCO_SPEC.md.

The official codes (Luffy03/VoCo ``models/voco_head.py`` for ``v1``, Luffy03/Large-Scale-Medical
``Self-supervised/models/voco_head.py`` for ``v2``; VOCO_SPEC.md sections 1.5, 2.4 and P6) loop
over the volumes of a batch in Python; inside one volume the (S, K) similarities and the
prediction terms are tensor operations, and only the base regulariser is a Python double loop
over the pairs i < j (36 pairs for 9 bases, 120 for 16), one cosine call per pair. This module
keeps that structure so that ``benchmarks/loss_benchmark.py`` measures ``VoCoLoss`` against it:

- per volume b: ReLU-ed cosines of normalised rows by one matrix product; the positive term
  ``-sum y log(1 - |y - l| + eps) / (sum y + eps)`` and the negative term over ``y == 0``
  (``l^2`` for v1, ``-log(1 - l + eps)`` for v2) by masked sums;
- v1: logits ``(ReLU cos(x^s, q^t) + ReLU cos(x^t, q^s)) / 2``; v2: intra-volume
  ``ReLU cos(x^s_b, q^t_b)`` and the inter-volume term against the teacher's
  ``ReLU cos(x^t_b, q^t_(b+1 mod B))`` (no gradient) with prediction ``ReLU cos(x^s_b, q^s_(b+1))``;
- the regulariser: mean over i < j of ``ReLU(cos(q^s_i, sg(q^s_j)))^2``, a Python double loop;
- every term averaged over volumes, all weights 1 unless given.

It is code of our own, not a copy: the official files also build crops, run the networks and
update the teacher, none of which is here. Differences from them: logits are capped at 1 as in
``VoCoLoss`` (the official codes apply ReLU only; the cap removes only float rounding above 1,
so the two agree on any input whose cosines do not round above 1), and nothing is printed.
``tests/reference/loop_reference.py`` is the slower entry-by-entry loop the tests compare with.
"""
import torch
import torch.nn.functional as F


def _similarities(targets: torch.Tensor, bases: torch.Tensor) -> torch.Tensor:
    """ReLU-ed cosines of one volume, (S, D) x (K, D) -> (S, K), capped at 1."""
    cosines = F.normalize(targets, dim=-1, eps=1e-8) @ F.normalize(bases, dim=-1, eps=1e-8).t()
    return cosines.relu().clamp(max=1.0)


def _prediction_terms(y: torch.Tensor, logits: torch.Tensor, neg: str, eps: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative terms of one volume from (S, K) targets and logits."""
    pos = -(y * torch.log(1.0 - (y - logits).abs() + eps)).sum() / (y.sum() + eps)
    zeros = (y == 0).to(logits.dtype)
    per_entry = logits**2 if neg == "square" else -torch.log(1.0 - logits + eps)
    return pos, (zeros * per_entry).sum() / (zeros.sum() + eps)


def _regularizer(bases: torch.Tensor) -> torch.Tensor:
    """Mean over base pairs i < j of ReLU(cos(q_i, sg(q_j)))^2, one cosine call per pair."""
    k = bases.shape[0]
    total, pairs = bases.new_zeros(()), 0
    for i in range(k):
        for j in range(i + 1, k):
            cos = F.cosine_similarity(bases[i : i + 1], bases[j : j + 1].detach(), dim=-1, eps=1e-8)
            total = total + cos.relu().pow(2).sum()
            pairs += 1
    return total / max(pairs, 1)


def official_structure_loss(
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
    """The VoCo loss terms, one volume at a time, in the official codes' structure.

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
    n_volumes = student_targets.shape[0]
    pos_terms, neg_terms, reg_terms, inter_terms = [], [], [], []
    for b in range(n_volumes):
        x_s, q_s, x_t, q_t = student_targets[b], student_bases[b], teacher_targets[b], teacher_bases[b]
        if preset == "v1":
            logits = 0.5 * (_similarities(x_s, q_t) + _similarities(x_t, q_s))
            pos, neg = _prediction_terms(overlaps[b], logits, "square", eps)
        else:
            pos, neg = _prediction_terms(overlaps[b], _similarities(x_s, q_t), "log", eps)
            nb = (b + 1) % n_volumes
            with torch.no_grad():
                soft = _similarities(x_t, teacher_bases[nb])
            inter_pos, inter_neg = _prediction_terms(soft, _similarities(x_s, student_bases[nb]), "log", eps)
            inter_terms.append(inter_pos + inter_neg)
        pos_terms.append(pos)
        neg_terms.append(neg)
        reg_terms.append(_regularizer(q_s))
    pos, neg, reg = (torch.stack(terms).mean() for terms in (pos_terms, neg_terms, reg_terms))
    inter = torch.stack(inter_terms).mean() if preset == "v2" else pos.new_zeros(())
    loss = pos_weight * pos + neg_weight * neg + reg_weight * reg
    if preset == "v2":
        loss = loss + inter_weight * inter
    return {"loss": loss, "pos": pos, "neg": neg, "reg": reg, "inter": inter}
