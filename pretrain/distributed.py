"""Process context of a run: device, DDP under torchrun, precision and preemption signals."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal

import torch
import torch.distributed as dist

from nnunet_voco.nnunet import UserInputError


@dataclasses.dataclass
class RunContext:
    """Where this process runs and what it may write."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    control_group: object = None  # gloo group for host-side flags when the main backend is nccl

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def any_rank(self, *flags: bool) -> list[bool]:
        """Element-wise OR of ``flags`` over all ranks, so that every rank takes the same branch.

        One small all-reduce of a CPU tensor per call under DDP, over gloo, so it never waits for the
        GPU (a signal may reach the ranks a step apart, and a rank that leaves the loop alone would
        wait forever in a collective); a no-op otherwise.
        """
        if not self.distributed:
            return [bool(f) for f in flags]
        values = torch.tensor([int(bool(f)) for f in flags])
        dist.all_reduce(values, op=dist.ReduceOp.MAX, group=self.control_group)
        return [bool(v) for v in values.tolist()]

    def close(self, clean: bool = True) -> None:
        """End the process group. ``clean=False`` (an error on this rank): no barrier and no destroy,
        because the other ranks may sit in a collective this rank never joins; exiting closes the
        connections, which ends their collective with an error (and torchrun stops them)."""
        if clean and self.distributed and dist.is_initialized():
            # A barrier before destroy_process_group: without it one gloo rank aborted at exit
            # ("terminate called without an active exception") in one of two runs (DESIGN.md 7).
            dist.barrier()
            dist.destroy_process_group()


def resolve_device(name: str | None) -> torch.device:
    """``cpu``/``cuda``/``mps``; ``None`` picks CUDA when available. Unavailable devices are an error."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda", "mps"):
        raise UserInputError(f"unknown device {name!r}; pass -device cpu, cuda or mps")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserInputError("-device cuda was requested but CUDA is not available here; pass -device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserInputError("-device mps was requested but MPS is not available here; pass -device cpu")
    return torch.device(name)


def init_context(device_name: str | None) -> RunContext:
    """Set up the device and, under torchrun (``WORLD_SIZE`` > 1), the process group (nccl/gloo)."""
    device = resolve_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return RunContext(device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    control = dist.new_group(backend="gloo") if device.type == "cuda" else None
    return RunContext(device, rank, world_size, local_rank, control)


def autocast_dtype(precision: str | None, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: bf16 by default on CUDA, none (fp32) elsewhere."""
    precision = precision or ("bf16" if device.type == "cuda" else "fp32")
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
    if precision not in table:
        raise UserInputError(f"unknown precision {precision!r}; pass --precision bf16, fp16 or fp32")
    if table[precision] is not None and device.type != "cuda":
        raise UserInputError(f"--precision {precision} needs a CUDA device (got {device.type}); use --precision fp32")
    return table[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class StopRequest:
    """Turns SIGTERM / SIGINT into a flag checked between steps (a second signal stops at once)."""

    def __init__(self):
        self.signal: int | None = None
        self._previous = {}

    def install(self) -> "StopRequest":
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.signal = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def signum(self) -> int:
        """The signal that stopped this rank: SIGTERM when it stopped for another rank's signal."""
        return self.signal or signal.SIGTERM

    @property
    def exit_code(self) -> int:
        """128 + :attr:`signum`, as a shell reports a killed process."""
        return 128 + int(self.signum)
