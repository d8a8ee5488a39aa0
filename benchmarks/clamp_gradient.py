"""Gradient of the VoCo loss near collapse: hard clamp(0, 1) vs the straight-through cap, float32 vs float64.

Near-collapsed embeddings (one common vector plus 1e-4 noise) make most float32 cosines round to >= 1.
A hard ``clamp(0, 1)`` passes no gradient there; ``VoCoLoss`` caps the value but keeps ReLU's gradient
(:func:`nnunet_voco.voco.loss_terms.straight_through_cap`, and the written-out v2 gradient). The hard-clamp rows use
``tests/reference/official_structure.py``, which computes the same loss with ``relu().clamp(max=1)``.
Printed: the float32 / float64 gradient-norm ratio and cosine over 3 seeds, both presets (the float64
inputs have no rounded-up cosines, so both variants agree there).

    python benchmarks/clamp_gradient.py
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from nnunet_voco.voco.loss import VoCoLoss  # noqa: E402
from tests.reference.official_structure import official_structure_loss  # noqa: E402
from tests.test_loss import _near_collapsed  # noqa: E402


def main() -> None:
    variants = (("hard clamp(0, 1)", lambda preset: lambda *a: official_structure_loss(*a, preset=preset)),
                ("straight-through cap", VoCoLoss))
    for name, make_loss in variants:
        for preset in ("v1", "v2"):
            loss_fn = make_loss(preset)
            ratios, cosines, rounded = [], [], []
            for seed in range(3):
                inputs32 = _near_collapsed((2, 2, 9, 256), seed)
                grads = []
                for inputs in (inputs32, [t.double() for t in inputs32]):
                    leaves = [t.clone().requires_grad_() for t in inputs[:2]]
                    out = loss_fn(*leaves, *inputs[2:])
                    grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(out["loss"], leaves)]).double())
                ratios.append(float(grads[0].norm() / grads[1].norm()))
                cosines.append(float(torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)))
                x, q = (torch.nn.functional.normalize(t, dim=-1) for t in (inputs32[0], inputs32[3]))
                rounded.append(float((torch.bmm(x, q.transpose(1, 2)) >= 1).float().mean()))
            print(f"{name:22s} {preset}: cosines rounded to >= 1: {min(rounded):.0%}-{max(rounded):.0%}; gradient norm "
                  f"f32/f64 {min(ratios):.3f}-{max(ratios):.3f}, cosine {min(cosines):.4f}-{max(cosines):.4f}")


if __name__ == "__main__":
    main()
