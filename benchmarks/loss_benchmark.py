"""Forward+backward wall time of VoCoLoss against the official codes' structure, same inputs, same process.

The reference is ``tests/reference/official_structure.py``: our own code that computes the loss the
way the official codes structure it (a Python loop over volumes, tensor operations inside a volume,
a Python double loop over base pairs in the regulariser). Calls of the two are interleaved, so that
load from other processes hits both alike; values and gradients must agree.

Run as ``python benchmarks/loss_benchmark.py`` (1 torch thread unless ``--threads``);
``benchmark_loss`` is also called from ``benchmarks/run.py``.
"""
import argparse
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.peak_memory import wall_ms  # noqa: E402
from nnunet_voco.voco.loss import VoCoLoss  # noqa: E402
from tests.reference.official_structure import official_structure_loss  # noqa: E402

# (B, S, K, D) = volumes, target crops, base crops, embedding width: the official recipes' grids
# (v2: 3x3 bases, width 1024; v1: 4x4 bases, width 2048) at a few batch sizes.
PRESET_SIZES = {"v2": ((2, 2, 9, 1024), (8, 2, 9, 1024), (16, 2, 9, 1024)),
                "v1": ((2, 2, 16, 2048), (8, 4, 16, 2048))}
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


def _interleaved_ms(fast: Callable[[], None], reference: Callable[[], None], device: str, repeats: int,
                    reference_repeats: int, warmup: int) -> tuple[float, float]:
    """Median times of ``fast`` and ``reference``; reference calls are spread evenly among the fast ones."""
    for _ in range(warmup):
        fast()
    reference()  # one untimed warm-up call
    every = max(1, repeats // max(reference_repeats, 1))
    fast_ms, reference_ms = [], []
    for i in range(max(repeats, reference_repeats)):
        if i < repeats:
            fast_ms.append(wall_ms(fast, device))
        if i % every == 0 and len(reference_ms) < reference_repeats:
            reference_ms.append(wall_ms(reference, device))
    return statistics.median(fast_ms), statistics.median(reference_ms)


def benchmark_loss(
    device: str = "cpu",
    sizes: tuple[tuple[int, int, int, int], ...] | None = None,
    repeats: int = 20,
    reference_repeats: int = 3,
    warmup: int = 2,
    presets: tuple[str, ...] = ("v2", "v1"),
) -> list[dict]:
    """Times forward+backward of ``VoCoLoss`` and of the official-structure reference on the same inputs.

    Args:
        device: Torch device string for the inputs.
        sizes: ``(B, S, K, D)`` tuples: volumes, target crops, base crops, embedding width, used for
            every preset; ``None`` takes ``PRESET_SIZES`` of each preset.
        repeats: Timed runs of ``VoCoLoss`` per measurement; the median is reported.
        reference_repeats: Timed runs of the (slow) reference per measurement, spread among them.
        warmup: Untimed runs of ``VoCoLoss`` before the timed ones (the reference gets one).
        presets: Loss presets to measure.

    Returns:
        One dict per (preset, size) with ``preset``, ``B``, ``S``, ``K``, ``D``, ``voco_ms``,
        ``official_structure_ms``, ``speedup`` (official structure / voco), ``max_abs_diff`` (largest
        absolute difference over the loss and its terms) and ``max_grad_diff`` (largest absolute
        difference of the gradients with respect to the student embeddings).
    """
    rows = []
    for preset in presets:
        loss_fn = VoCoLoss(preset)
        for seed, size in enumerate(sizes or PRESET_SIZES[preset]):
            inputs = _inputs(size, device, seed)

            def run(fn: Callable[..., dict]) -> tuple[dict, list[torch.Tensor]]:
                inputs[0].grad = inputs[1].grad = None
                out = fn(*inputs)
                out["loss"].backward()
                return out, [inputs[0].grad, inputs[1].grad]

            def reference(*args: torch.Tensor) -> dict:
                return official_structure_loss(*args, preset=preset)

            (fast_out, fast_grads), (ref_out, ref_grads) = run(loss_fn), run(reference)
            diff = max(float((fast_out[t] - ref_out[t]).detach().abs()) for t in TERMS)
            grad_diff = max(float((f - r).abs().max()) for f, r in zip(fast_grads, ref_grads))
            voco_ms, ref_ms = _interleaved_ms(lambda: run(loss_fn), lambda: run(reference), device, repeats,
                                              reference_repeats, warmup)
            b, s, k, d = size
            rows.append({"preset": preset, "B": b, "S": s, "K": k, "D": d, "voco_ms": voco_ms,
                         "official_structure_ms": ref_ms, "speedup": ref_ms / voco_ms, "max_abs_diff": diff,
                         "max_grad_diff": grad_diff})
    return rows


def loss_table(rows: list[dict]) -> str:
    """The rows of :func:`benchmark_loss` as a markdown table."""
    lines = ["| preset | B | S | K | D | VoCoLoss ms | official-structure reference ms | speed-up | "
             "max abs diff (terms / gradients) |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['preset']} | {r['B']} | {r['S']} | {r['K']} | {r['D']} | {r['voco_ms']:.2f} | "
              f"{r['official_structure_ms']:.1f} | {r['speedup']:.1f}x | {r['max_abs_diff']:.1e} / "
              f"{r['max_grad_diff']:.1e} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Prints the benchmark as a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="[OPTIONAL] torch threads (default 1)")
    parser.add_argument("--repeats", type=int, default=20, help="[OPTIONAL] timed VoCoLoss runs (default 20)")
    parser.add_argument("--reference_repeats", type=int, default=3,
                        help="[OPTIONAL] timed reference runs (default 3)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"device cpu, torch {torch.__version__}, {torch.get_num_threads()} threads, float32, forward+backward; "
          f"median of {args.repeats} runs (VoCoLoss, 2 warm-up) and {args.reference_repeats} runs (reference, "
          "1 warm-up), interleaved\n")
    print(loss_table(benchmark_loss(repeats=args.repeats, reference_repeats=args.reference_repeats)))


if __name__ == "__main__":
    main()
