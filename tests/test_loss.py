"""Tests for nnunet_voco.voco.loss: closed forms worked out by hand, and equality with the loop reference."""
import math
import sys
from pathlib import Path

import pytest
import torch

from nnunet_voco.voco.loss import VoCoLoss

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.reference.loop_reference import loop_reference_loss  # noqa: E402

TERMS = ("loss", "pos", "neg", "reg", "inter")
SHAPES = [(1, 2, 4, 16), (2, 2, 9, 32), (3, 4, 16, 64), (2, 1, 4, 8)]  # (B, S, K, D)


def _random_inputs(shape: tuple[int, int, int, int], dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    """Student/teacher embeddings plus overlaps with exact zeros, rows summing to 1."""
    b, s, k, d = shape
    gen = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(b, n, d, generator=gen, dtype=dtype) for n in (s, k, s, k)]
    overlaps = torch.rand(b, s, k, generator=gen, dtype=dtype)
    overlaps = overlaps * (torch.rand(b, s, k, generator=gen) < 0.5)
    overlaps[..., 0] += 0.1  # at least one positive per row
    return [t.requires_grad_() for t in tensors] + [overlaps / overlaps.sum(-1, keepdim=True)]


def _unit(*angles_deg: float) -> torch.Tensor:
    """(1, N, 2) unit vectors at the given angles."""
    rad = torch.tensor(angles_deg, dtype=torch.float64) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=-1)[None]


@pytest.mark.parametrize("preset", ["v1", "v2"])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference_values_and_gradients(preset: str, shape: tuple[int, int, int, int]) -> None:
    inputs = _random_inputs(shape, torch.float64)
    fast = VoCoLoss(preset)(*inputs)
    fast_grads = torch.autograd.grad(fast["loss"], inputs[:2])
    ref = loop_reference_loss(*inputs, preset=preset)
    ref_grads = torch.autograd.grad(ref["loss"], inputs[:2])
    for name in TERMS:
        torch.testing.assert_close(fast[name], ref[name], atol=1e-5, rtol=1e-5, msg=name)
    for fast_grad, ref_grad in zip(fast_grads, ref_grads):
        torch.testing.assert_close(fast_grad, ref_grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", ["v1", "v2"])
def test_matches_reference_float32(preset: str) -> None:
    inputs = _random_inputs((2, 2, 16, 256), torch.float32, seed=1)
    fast, ref = VoCoLoss(preset)(*inputs), loop_reference_loss(*inputs, preset=preset)
    assert fast["loss"].dtype == torch.float32
    for name in TERMS:
        torch.testing.assert_close(fast[name], ref[name], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("preset", ["v1", "v2"])
def test_target_equal_to_first_base_gives_zero_loss(preset: str) -> None:
    # Bases (1, 0) and (0, 1), target (1, 0), overlaps (1, 0); student and teacher get the same tensors.
    bases, target = _unit(0, 90), _unit(0)
    out = VoCoLoss(preset)(target, bases, target, bases, torch.tensor([[[1.0, 0.0]]]))
    for name in TERMS:
        assert abs(out[name].item()) < 1e-4, name


@pytest.mark.parametrize("preset", ["v1", "v2"])
def test_target_halfway_between_bases(preset: str) -> None:
    # Bases (1, 0) and (0, 1), target at 45 degrees (cos 0.7071 to each), overlaps (0.5, 0.5);
    # student == teacher. pos = -ln(1 - |0.5 - 0.7071|); no zero overlaps, so neg = 0.
    bases, target = _unit(0, 90), _unit(45)
    out = VoCoLoss(preset)(target, bases, target, bases, torch.tensor([[[0.5, 0.5]]]))
    assert out["pos"].item() == pytest.approx(0.23207, abs=1e-4)
    assert out["neg"].item() == pytest.approx(0.0, abs=1e-4)


def test_bases_sixty_degrees_apart_give_squared_regularizer() -> None:
    # Bases at 0 and 60 degrees (cos 0.5): ReLU(0.5)^2 = 0.25, not 0.5.
    bases, target = _unit(0, 60), _unit(30)
    out = VoCoLoss("v2")(target, bases, target, bases, torch.tensor([[[0.5, 0.5]]]))
    assert out["reg"].item() == pytest.approx(0.25, abs=1e-4)


def test_regularizer_gradient_reaches_lower_index_base_only() -> None:
    inputs = _random_inputs((2, 2, 2, 16), torch.float64, seed=2)
    with torch.no_grad():  # make the two bases of each volume positively correlated
        inputs[1][:, 1] = inputs[1][:, 0] + 0.5 * inputs[1][:, 1]
    (grad,) = torch.autograd.grad(VoCoLoss("v2")(*inputs)["reg"], inputs[1])
    assert grad[:, 0].abs().min() > 0
    assert torch.equal(grad[:, 1], torch.zeros_like(grad[:, 1]))


@pytest.mark.parametrize("preset", ["v1", "v2"])
def test_bfloat16_under_autocast_computes_in_float32(preset: str) -> None:
    inputs = [t.detach().bfloat16() for t in _random_inputs((2, 2, 9, 64), torch.float32, seed=3)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = VoCoLoss(preset)(*inputs)
    expected = VoCoLoss(preset)(*[t.float() for t in inputs])
    assert out["loss"].dtype == torch.float32
    torch.testing.assert_close(out["loss"], expected["loss"], atol=1e-5, rtol=1e-5)


def test_unknown_preset_raises_with_value() -> None:
    with pytest.raises(ValueError, match="'v3'.*'v1', 'v2'"):
        VoCoLoss("v3")


@pytest.mark.parametrize("term", ["pos", "neg", "reg", "inter"])
def test_zero_weight_removes_term(term: str) -> None:
    inputs = _random_inputs((2, 2, 9, 32), torch.float64, seed=4)
    full = VoCoLoss("v2")(*inputs)
    without = VoCoLoss("v2", **{f"{term}_weight": 0.0})(*inputs)
    assert full[term].abs() > 1e-3
    torch.testing.assert_close(without["loss"], full["loss"] - full[term])


def test_v1_ignores_inter_term() -> None:
    out = VoCoLoss("v1")(*_random_inputs((2, 2, 4, 8), torch.float64))
    assert out["inter"].item() == 0.0
    torch.testing.assert_close(out["loss"], out["pos"] + out["neg"] + out["reg"])


def test_statistics_are_detached_and_detect_collapse() -> None:
    # Every embedding identical: spread 0, all logits 1, bases fully similar; no zero overlaps -> 0.
    same = torch.ones(2, 4, 8, requires_grad=True)
    out = VoCoLoss("v2")(same, same, same, same, torch.full((2, 4, 4), 0.25))
    stats = {name: out[name] for name in ("logit_overlap_mean", "logit_zero_mean",
                                           "base_similarity_mean", "embedding_std")}
    assert not any(value.requires_grad for value in stats.values())
    expected = {"logit_overlap_mean": 1.0, "logit_zero_mean": 0.0, "base_similarity_mean": 1.0,
                "embedding_std": 0.0}
    for name, value in expected.items():
        assert stats[name].item() == pytest.approx(value, abs=1e-6), name


def test_embedding_std_of_spread_embeddings_is_near_inverse_sqrt_dim() -> None:
    inputs = _random_inputs((8, 4, 16, 256), torch.float32, seed=5)
    std = VoCoLoss("v2")(*inputs)["embedding_std"].item()
    assert std == pytest.approx(1 / math.sqrt(256), rel=0.05)


def _near_collapsed(shape: tuple[int, int, int, int], seed: int) -> list[torch.Tensor]:
    """Float32 embeddings that are one common vector plus 1e-4 noise (a run close to collapse)."""
    b, s, k, d = shape
    gen = torch.Generator().manual_seed(seed)
    common = torch.randn(d, generator=gen)
    tensors = [common + 1e-4 * torch.randn(b, n, d, generator=gen) for n in (s, k, s, k)]
    overlaps = torch.rand(b, s, k, generator=gen) * (torch.rand(b, s, k, generator=gen) < 0.5)
    overlaps[..., 0] += 0.1
    return tensors + [overlaps / overlaps.sum(-1, keepdim=True)]


@pytest.mark.parametrize("preset", ["v1", "v2"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradient_survives_cosines_rounded_to_one(preset: str, seed: int) -> None:
    """Near collapse most float32 cosines round to >= 1; the gradient must still match float64."""
    inputs32 = _near_collapsed((2, 2, 9, 256), seed)
    inputs64 = [t.double() for t in inputs32]
    grads = {}
    for name, inputs in (("f32", inputs32), ("f64", inputs64)):
        leaves = [t.clone().requires_grad_() for t in inputs[:2]]
        out = VoCoLoss(preset)(*leaves, *inputs[2:])
        assert torch.isfinite(out["loss"])
        grads[name] = torch.cat([g.flatten() for g in torch.autograd.grad(out["loss"], leaves)]).double()
    x = torch.nn.functional.normalize(inputs32[0], dim=-1)
    q = torch.nn.functional.normalize(inputs32[3], dim=-1)
    assert (torch.bmm(x, q.transpose(1, 2)) >= 1).float().mean() > 0.3  # the regime the test is about
    ratio = grads["f32"].norm() / grads["f64"].norm()
    cosine = torch.nn.functional.cosine_similarity(grads["f32"], grads["f64"], dim=0)
    assert abs(ratio - 1) < 0.05, f"gradient norm ratio {ratio:.3f}"
    assert cosine >= 0.99, f"gradient cosine {cosine:.4f}"
