"""CPU step time of the VoCo Swin-B encoder against the ResEnc-M encoder at the same crop size.

One step = forward of a batch of crops through the encoder, global average pooling of every
returned feature map, concatenation, mean as a stand-in loss, backward. No optimiser step, no
projector: the encoder is the cost that differs between the two families.

ResEnc-M here is the encoder of dynamic-network-architectures' ``ResidualEncoderUNet`` with the
settings nnU-Net's ResEnc-M planner produces for a 3-D patch: features 32-64-128-256-320-320,
blocks (1, 3, 4, 6, 6, 6), strides 1-2-2-2-2-2, 3^3 kernels, InstanceNorm, LeakyReLU (6 stages fit
a 64^3 crop: 2^3 voxels at the bottleneck).

Run: ``python benchmarks/swin_vs_resenc.py [--crop 64] [--batch 4] [--steps 3] [--feature_size 48]``
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from nnunet_voco.encoders.swin import build_swin_encoder


class _ResEncStages(nn.Module):
    """ResEnc-M encoder returning the output of every stage (what VoCo pools for CNNs)."""

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder

        self.encoder = ResidualEncoder(
            in_channels, 6, [32, 64, 128, 256, 320, 320], nn.Conv3d, 3, [1, 2, 2, 2, 2, 2], [1, 3, 4, 6, 6, 6],
            conv_bias=True, norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
            nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, return_skips=True,
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder(x)


def _step(module: nn.Module, x: torch.Tensor) -> None:
    maps = module(x)
    embedding = torch.cat([m.mean(dim=(2, 3, 4)) for m in maps], dim=1)  # (B, sum of stage channels)
    embedding.mean().backward()
    module.zero_grad(set_to_none=True)


def time_encoder(module: nn.Module, crop: int, batch: int, steps: int, warmup: int = 1) -> tuple[float, float, int]:
    """Mean wall and CPU (process) milliseconds per step after ``warmup`` steps, and the embedding length.

    CPU time is reported too because on a shared machine wall time depends on other load.
    """
    module.train()
    x = torch.randn(batch, 1, crop, crop, crop)
    with torch.no_grad():
        dim = sum(m.shape[1] for m in module(x[:1]))
    for _ in range(warmup):
        _step(module, x)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        _step(module, x)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return wall / steps * 1000.0, cpu / steps * 1000.0, dim


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, default=64, help="crop edge (multiple of 32)")
    parser.add_argument("--batch", type=int, default=4, help="crops per step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    parser.add_argument("--feature_size", type=int, default=48, help="Swin feature size (48 = swin_b)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    swin = build_swin_encoder(1, args.feature_size)
    swin.validate_crop((args.crop,) * 3)  # the encoder says which crops it accepts (ValueError otherwise)
    rows = []
    for name, module in (("ResEnc-M", _ResEncStages()), (f"swin (F={args.feature_size})", swin.module)):
        params = sum(p.numel() for p in module.parameters()) / 1e6
        ms, cpu_ms, dim = time_encoder(module, args.crop, args.batch, args.steps)
        rows.append((name, params, dim, ms, cpu_ms))
    base, cpu_base = rows[0][3], rows[0][4]
    print(f"\nCPU, {torch.get_num_threads()} threads, batch {args.batch} x {args.crop}^3, forward+backward, "
          f"mean of {args.steps} steps\n")
    print("| encoder | params (M) | embedding | ms/step (wall) | ratio | CPU ms/step | CPU ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, params, dim, ms, cpu_ms in rows:
        print(f"| {name} | {params:.1f} | {dim} | {ms:.0f} | {ms / base:.2f} | {cpu_ms:.0f} | {cpu_ms / cpu_base:.2f} |")


if __name__ == "__main__":
    main()
