"""Forward+backward wall time of VoCoLoss against the loop reference in tests/reference.

Run as ``python benchmarks/loss_benchmark.py``; ``benchmark_loss`` is also called from
``benchmarks/run.py``.
"""
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nnunet_voco.voco.loss import VoCoLoss  # noqa: E402
from tests.reference.voco_reference import reference_voco_loss  # noqa: E402

DEFAULT_SIZES = ((2, 2, 16, 2048), (8, 4, 16, 2048), (16, 2, 9, 1024))  # (B, S, K, D)
TERMS = ("loss", "pos", "neg", "reg", "inter")


def _inputs(size: tuple[int, int, int, int], device: str, seed: int) -> list[torch.Tensor]:
    """Student embeddings with grad, teacher embeddings without, overlaps with zeros, rows summing to 1."""
    b, s, k, d = size
    gen = torch.Generator().manual_seed(seed)
    x_s, q_s, x_t, q_t = (torch.randn(b, n, d, generator=gen) for n in (s, k, s, k))
    overlaps = torch.rand(b, s, k, generator=gen) * (torch.rand(b, s, k, generator=gen) < 0.4)
    overlaps[..., 0] += 0.1
    overlaps = overlaps / overlaps.sum(-1, keepdim=True)
    return [x_s.to(device).requires_grad_(), q_s.to(device).requires_grad_(), x_t.to(device),
            q_t.to(device), overlaps.to(device)]


def _median_ms(step: Callable[[], None], device: str, repeats: int, warmup: int) -> float:
    """Median wall time of ``step`` in milliseconds, after ``warmup`` untimed calls."""
    times = []
    for i in range(warmup + repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def benchmark_loss(
    device: str = "cpu",
    sizes: tuple[tuple[int, int, int, int], ...] = DEFAULT_SIZES,
    repeats: int = 20,
    reference_repeats: int = 3,
    warmup: int = 2,
    presets: tuple[str, ...] = ("v2", "v1"),
) -> list[dict]:
    """Times forward+backward of ``VoCoLoss`` and of the loop reference on the same inputs.

    Args:
        device: Torch device string for the inputs.
        sizes: ``(B, S, K, D)`` tuples: volumes, target crops, base crops, embedding width.
        repeats: Timed runs of ``VoCoLoss`` per measurement; the median is reported.
        reference_repeats: Timed runs of the (slow) loop reference per measurement.
        warmup: Untimed runs of ``VoCoLoss`` before the timed ones (the reference gets one).
        presets: Loss presets to measure.

    Returns:
        One dict per (preset, size) with ``preset``, ``B``, ``S``, ``K``, ``D``, ``voco_ms``,
        ``reference_ms``, ``speedup`` (reference / voco) and ``max_abs_diff`` (largest absolute
        difference over the loss and its terms).
    """
    rows = []
    for preset in presets:
        loss_fn = VoCoLoss(preset)
        for seed, size in enumerate(sizes):
            inputs = _inputs(size, device, seed)

            def run(fn: Callable[..., dict]) -> dict:
                inputs[0].grad = inputs[1].grad = None
                out = fn(*inputs)
                out["loss"].backward()
                return out

            fast_out = run(loss_fn)
            ref_out = run(lambda *a: reference_voco_loss(*a, preset=preset))
            diff = max(float((fast_out[t] - ref_out[t]).detach().abs()) for t in TERMS)
            voco_ms = _median_ms(lambda: run(loss_fn), device, repeats, warmup)
            ref_ms = _median_ms(lambda: run(lambda *a: reference_voco_loss(*a, preset=preset)),
                                device, reference_repeats, 1)
            b, s, k, d = size
            rows.append({"preset": preset, "B": b, "S": s, "K": k, "D": d, "voco_ms": voco_ms,
                         "reference_ms": ref_ms, "speedup": ref_ms / voco_ms, "max_abs_diff": diff})
    return rows


def main() -> None:
    """Prints the benchmark as a markdown table."""
    print(f"device cpu, torch {torch.__version__}, {torch.get_num_threads()} threads, float32, "
          "forward+backward; median of 20 runs (VoCoLoss, 2 warm-up) and 3 runs (reference, 1 warm-up)\n")
    print("| preset | B | S | K | D | VoCoLoss ms | reference ms | speed-up | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in benchmark_loss():
        print(f"| {r['preset']} | {r['B']} | {r['S']} | {r['K']} | {r['D']} | {r['voco_ms']:.2f} | "
              f"{r['reference_ms']:.1f} | {r['speedup']:.0f}x | {r['max_abs_diff']:.1e} |")


if __name__ == "__main__":
    main()
