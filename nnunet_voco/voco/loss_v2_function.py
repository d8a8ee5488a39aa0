"""The v2 (TPAMI) VoCo loss as one autograd function whose gradient is written out.

At the official sizes the v2 loss costs the number of small operations, not arithmetic; one node with
a hand-derived backward replaces about forty autograd nodes (benchmarks/loss_benchmark.py measures the
effect; tests/test_loss.py pins values and gradients against both references in tests/reference/).
"""
import torch

from nnunet_voco.voco.loss_terms import NORM_EPS, clamped_norms, entry_weights, pair_cosines, straight_through_cap


class V2LossFunction(torch.autograd.Function):
    """The v2 loss (intra- and inter-volume terms, regulariser) with its gradient written out.

    One autograd node instead of about forty: the v2 loss runs every step, and at the official sizes
    its cost is the number of small operations, not arithmetic. ``tests/test_loss.py`` pins values and
    gradients against both references. Outputs: ``loss``, ``terms`` (2, 2) = [[pos, inter pos],
    [neg, inter neg]], ``reg``, and without gradient the intra-volume logits (B, S, K), the base
    cosines (B, K, K) and the row norms of the student targets and bases.
    """

    @staticmethod
    def forward(ctx, x_s: torch.Tensor, q_s: torch.Tensor, x_t: torch.Tensor, q_t: torch.Tensor, y: torch.Tensor,
                term_weights: torch.Tensor, pairs: torch.Tensor, reg_weight: float, eps: float) -> tuple:
        b, s, k = y.shape
        n_xs, n_qs, n_xt, n_qt = (clamped_norms(t) for t in (x_s, q_s, x_t, q_t))
        # Columns [q^t_i, q^s_(i+1)]: the intra-volume logits and the inter-volume prediction at once.
        columns = torch.cat([q_t, q_s.roll(-1, dims=0)], dim=1)  # (B, 2K, D)
        column_norms = torch.cat([n_qt, n_qs.roll(-1, dims=0)], dim=1)  # (B, 2K)
        norm_products = n_xs.unsqueeze(2) * column_norms.unsqueeze(1)  # (B, S, 2K), as in pair_cosines
        cos = torch.bmm(x_s, columns.transpose(1, 2)) / norm_products
        logits = cos.clamp(0.0, 1.0).view(b, s, 2, k)  # the values of straight_through_cap; [intra, inter]
        # The inter-volume soft target: teacher targets i vs teacher bases i + 1.
        soft = pair_cosines(x_t, q_t.roll(-1, dims=0), n_xt, n_qt.roll(-1, dims=0)).clamp_(0.0, 1.0)
        targets = torch.cat([y, soft], dim=2).view(b, s, 2, k)
        entry = entry_weights(targets, (1, 3), eps).neg_()  # (2, B, S, 2, K)
        gap = targets - logits
        shrunk = 1.0 - gap.abs() + eps  # log(1 - |y - l| + eps); = log(1 - l + eps) where y == 0
        terms = (shrunk.log() * entry).sum((1, 2, 4))  # (2, 2), averaged over volumes
        gram_norm_products = n_qs.unsqueeze(2) * n_qs.unsqueeze(1)
        gram = torch.bmm(q_s, q_s.transpose(1, 2)) / gram_norm_products  # (B, K, K)
        positive = gram.clamp_min(0.0)
        reg = (positive.square() * pairs).sum()
        loss = (terms * term_weights).sum() + reg_weight * reg
        # 1 / |x|^2 for the rows whose cosines get a gradient (0 where the norm is at its clamp, whose
        # gradient is 0 as in autograd): targets, columns, bases; their d|x| terms in one go.
        row_norms = torch.cat([n_xs, column_norms, n_qs], dim=1)  # (B, S + 3K)
        inverse_squares = (row_norms > NORM_EPS) / row_norms.square()
        ctx.save_for_backward(x_s, q_s, q_t, columns, norm_products, gram_norm_products, inverse_squares, cos, gap,
                              shrunk, entry, positive, gram, term_weights, pairs)
        ctx.reg_weight = reg_weight
        intra = logits[:, :, 0]
        ctx.mark_non_differentiable(intra, gram, n_xs, n_qs)
        return loss, terms, reg, intra, gram, n_xs, n_qs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_loss: torch.Tensor, g_terms: torch.Tensor, g_reg: torch.Tensor, *_unused: torch.Tensor
                 ) -> tuple:
        with torch.autocast(device_type=g_loss.device.type, enabled=False):  # as the forward: >= float32
            return V2LossFunction._gradients(ctx, g_loss, g_terms, g_reg)

    @staticmethod
    def _gradients(ctx, g_loss: torch.Tensor, g_terms: torch.Tensor, g_reg: torch.Tensor) -> tuple:
        x_s, q_s, q_t, columns, norm_products, gram_norm_products, inverse_squares, cos, gap, shrunk, entry, positive, \
            gram, term_weights, pairs = ctx.saved_tensors
        s, k = x_s.shape[1], q_s.shape[1]
        g_terms = g_terms + g_loss * term_weights
        g_reg = g_reg + g_loss * ctx.reg_weight
        d_log = (entry * g_terms[:, None, None, :, None]).sum(0)  # (B, S, 2, K)
        # d log(1 - |y - l| + eps) / dl = sign(y - l) / (1 - |y - l| + eps); the cap passes ReLU's gradient.
        d_cos = (d_log * gap.sign() / shrunk).view(cos.shape) * (cos > 0)  # (B, S, 2K)
        # Regulariser: stop-gradient on the second base of each pair, so only the first factor.
        d_gram = (2.0 * g_reg) * positive * pairs  # (B, K, K)
        # cos = a b^T / (|a| |b|^T): d a = (d_cos / |a||b|^T) b - (sum_k d_cos cos / |a|^2) a, same for b.
        weighted = d_cos * cos
        sums = torch.cat([weighted.sum(2), weighted.sum(1), (d_gram * gram).sum(2)], dim=1)  # (B, S + 3K)
        scales = (sums * inverse_squares).neg_().unsqueeze(2)
        xs_scale, column_scale, gram_scale = scales.split([s, 2 * k, k], dim=1)
        d_dot = d_cos / norm_products
        grad_xs = torch.baddbmm(x_s * xs_scale, d_dot, columns)
        # Columns K: are q^s rolled by -1, so their gradient reaches q^s_b from volume b - 1.
        grad_qs = torch.baddbmm(q_s * (gram_scale + column_scale[:, k:].roll(1, dims=0)), d_gram / gram_norm_products,
                                q_s)
        grad_qs = torch.baddbmm(grad_qs, d_dot[:, :, k:].roll(1, dims=0).transpose(1, 2), x_s.roll(1, dims=0))
        grad_qt = None
        if ctx.needs_input_grad[3]:
            grad_qt = torch.baddbmm(q_t * column_scale[:, :k], d_dot[:, :, :k].transpose(1, 2), x_s)
        return grad_xs, grad_qs, None, grad_qt, None, None, None, None, None
