"""Building blocks of the VoCo loss terms: row norms, pair cosines, the straight-through cap at 1,
per-entry term weights, the log gap and the base regulariser (VoCo, CVPR 2024, arXiv:2402.17300, and the
TPAMI extension, arXiv:2410.09890; formulas in VOCO_SPEC.md sections 1.5 and 2.4).

They are shared by the v1 terms (autograd) in :mod:`nnunet_voco.voco.loss` and the v2 function with its
written-out gradient in :mod:`nnunet_voco.voco.loss_v2_function`.
"""
import functools

import torch


NORM_EPS = 1e-8  # embeddings are divided by max(||x||, NORM_EPS)


def clamped_norms(x: torch.Tensor) -> torch.Tensor:
    """Row L2 norms ``max(||x||, NORM_EPS)`` of the last axis: (B, N, D) -> (B, N)."""
    return torch.linalg.vector_norm(x, dim=-1).clamp_min(NORM_EPS)


def pair_cosines(a: torch.Tensor, b: torch.Tensor, norm_a: torch.Tensor, norm_b: torch.Tensor) -> torch.Tensor:
    """Cosines of every row pair per volume, (B,S,D), (B,K,D) -> (B,S,K), from the norms of both sides."""
    # Dividing the small Gram matrix by the norms, instead of normalising the (B, N, D) embeddings,
    # keeps the D-wide arrays out of all but the norm and matmul kernels (forward and backward).
    return torch.bmm(a, b.transpose(1, 2)) / (norm_a.unsqueeze(2) * norm_b.unsqueeze(1))


def straight_through_cap(cosines: torch.Tensor) -> torch.Tensor:
    """ReLU-ed cosines with values capped at 1 and ReLU's gradient everywhere (straight-through cap)."""
    # float32 cosines of near-identical embeddings round to >= 1, and log(1 - l + eps) must stay
    # finite; a hard clamp would pass no gradient for every rounded-up cosine, which is the
    # near-collapsed state where a run needs it most. relu(c) - max(c - 1, 0) is exactly 1 above 1.
    return cosines.relu() - (cosines.detach() - 1.0).clamp_min_(0.0)


@functools.lru_cache(maxsize=32)
def shape_constants(n_bases: int, n_volumes: int, weights: tuple[float, float, float, float], device: torch.device,
               dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-shape constants, built once per (K, B, term weights, device, dtype) instead of every call.

    Returns:
        ``pairs`` (K, K): 1 / (K(K-1)/2 * B) on the strict upper triangle (regulariser pairs i < j);
        ``off_diagonal`` (K, K): 1 / (K(K-1) * B) off the diagonal (base-similarity statistic);
        ``term_weights`` (2, 2): loss weights of [[pos, inter pos], [neg, inter neg]].
    """
    k, b = n_bases, n_volumes
    with torch.inference_mode(False):  # usable by autograd even when first built under inference mode
        upper = torch.ones(k, k, dtype=dtype, device=device).triu(diagonal=1)
        off = 1.0 - torch.eye(k, dtype=dtype, device=device)
        pos_w, neg_w, _, inter_w = weights
        term_weights = torch.tensor([[pos_w, inter_w], [neg_w, inter_w]], dtype=dtype, device=device)
        return upper / (max(k * (k - 1) // 2, 1) * b), off / (max(k * (k - 1), 1) * b), term_weights


@torch.no_grad()
def entry_weights(targets: torch.Tensor, dims: tuple[int, ...], eps: float) -> torch.Tensor:
    """Weights that turn the prediction terms, averaged over volumes, into weighted sums over entries.

    Row 0 is ``y / (sum y + eps) / B`` (positive term), row 1 is ``[y == 0] / (#zeros + eps) / B``
    (negative term); the sums run over ``dims`` of ``targets`` (one volume's entries of one term), and
    ``B = targets.shape[0]``. Shape: ``(2, *targets.shape)``.
    """
    weights = torch.stack([targets, (targets == 0).to(targets.dtype)])
    denominators = weights.sum(tuple(d + 1 for d in dims), keepdim=True) + eps
    return weights / denominators.mul_(targets.shape[0])


def log_gap(targets: torch.Tensor, logits: torch.Tensor, eps: float) -> torch.Tensor:
    """log(1 - |y - l| + eps) per entry; where y == 0 it equals log(1 - l + eps), as l >= 0."""
    return torch.log(1.0 - (targets - logits).abs() + eps)


def regularization_term(bases: torch.Tensor, norms: torch.Tensor, pairs: torch.Tensor) -> tuple[torch.Tensor,
                                                                                                  torch.Tensor]:
    """Mean squared positive cosine over base pairs i < j, with the gradient reaching base i only.

    Args:
        bases: Student base-crop embeddings (not normalised), shape (B, K, D).
        norms: Their row norms, shape (B, K).
        pairs: The ``pairs`` weights of :func:`shape_constants`.

    Returns:
        The scalar term (averaged over pairs and volumes, 0 when K < 2) and the detached cosines
        (B, K, K).
    """
    # Stop-gradient on the second factor: for the pair (i, j) only row i receives gradient.
    gram = pair_cosines(bases, bases.detach(), norms, norms.detach())  # (B, K, K)
    return (gram.relu().square() * pairs).sum(), gram.detach()
