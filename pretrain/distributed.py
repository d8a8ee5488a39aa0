"""Process context of a run: device, DDP under torchrun, precision and preemption signals.

Collectives (DESIGN.md section 9: every rank takes part in every collective, or none does):
the gradient all-reduce of DDP (nccl on CUDA, gloo on CPU) and, on the host, the stop flag
(:meth:`RunContext.any_rank`, every few steps), the held-out monitor's gather
(:meth:`RunContext.all_gather`, where every rank evaluates its share) and the barriers at the
folder claim and at the end, all over a gloo group so that they never wait for the GPU. Process
groups get :data:`COLLECTIVE_TIMEOUT`: a rank that stays behind longer than that (rank 0 writing
a checkpoint to a slow file system, a first compiled step) is an error rather than a hang.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import signal

import torch
import torch.distributed as dist

from nnunet_voco.nnunet import UserInputError

# Longer than NCCL's 10-minute default: rank 0 alone writes checkpoints and exports (a few GB on a
# network file system) while the other ranks wait at the next collective; torch.compile's first
# step may take minutes on some ranks.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)


@dataclasses.dataclass
class RunContext:
    """Where this process runs and what it may write."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    control_group: object = None  # gloo group for host-side flags when the main backend is nccl
    local_world_size: int = 1  # processes of this run on this machine (torchrun's LOCAL_WORLD_SIZE)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        """All ranks meet (over gloo: never blocked by queued GPU work)."""
        if self.distributed:
            dist.barrier(group=self.control_group)

    def all_gather(self, obj) -> list:
        """``obj`` of every rank, in rank order (pickled, over gloo); ``[obj]`` without DDP."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.control_group)
        return out

    def any_rank(self, *flags: bool) -> list[bool]:
        """Element-wise OR of ``flags`` over all ranks, so that every rank takes the same branch.

        One small all-reduce of a CPU tensor per call under DDP, over gloo, so it never waits for the
        GPU (a signal may reach the ranks a step apart, and a rank that leaves the loop alone would
        wait forever in a collective); a no-op otherwise. The loop calls it every few steps, at
        the same steps on every rank.
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
            dist.barrier(group=self.control_group)
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
    """Set up the device and, under torchrun (``WORLD_SIZE`` > 1), the process group.

    CUDA: nccl bound to this rank's GPU (``device_id``: the communicator is created at once, on the
    right device) plus a gloo group for host-side collectives; CPU: gloo. Both with
    :data:`COLLECTIVE_TIMEOUT`.
    """
    device = resolve_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return RunContext(device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device, control = init_process_groups(device, local_rank)
    return RunContext(device, rank, world_size, local_rank, control, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def init_process_groups(device: torch.device, local_rank: int) -> tuple[torch.device, object]:
    """The process groups of :func:`init_context` (torchrun's environment rendezvous); returns this
    rank's device and the gloo group for host-side collectives (None on CPU: the main group is gloo)."""
    if device.type != "cuda":
        dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)
        return device, None
    torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank)
    dist.init_process_group("nccl", device_id=device, timeout=COLLECTIVE_TIMEOUT)
    return device, dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT)


def configure_backends(device: torch.device, cudnn_benchmark: bool = True) -> None:
    """cuDNN autotuning on CUDA (the crops have one fixed shape, so the first steps' search pays
    off); ``cudnn_benchmark=False`` (``--no_cudnn_benchmark``) keeps PyTorch's default heuristics."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(cudnn_benchmark)


def resolve_precision(precision: str | None, device: torch.device) -> tuple[torch.dtype | None, str | None]:
    """Autocast dtype and a note for the log (or None).

    Default: bf16 on CUDA when the GPU has native bf16 (Ampere and newer), else fp16 with a
    GradScaler; fp32 elsewhere. An explicit ``--precision bf16`` on a GPU that only emulates it runs,
    with a warning.
    """
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
    if precision is not None and precision not in table:
        raise UserInputError(f"unknown precision {precision!r}; pass --precision bf16, fp16 or fp32")
    if precision not in (None, "fp32") and device.type != "cuda":
        raise UserInputError(f"--precision {precision} needs a CUDA device (got {device.type}); use --precision fp32")
    if device.type != "cuda":
        return None, None
    native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    if precision is None:
        if native_bf16:
            return torch.bfloat16, None
        return torch.float16, ("VoCo: precision fp16 with loss scaling (GradScaler): this GPU has no native bf16 "
                               "(pass --precision fp32 to train without autocast)")
    if precision == "bf16" and not native_bf16:
        return torch.bfloat16, ("VoCo: warning: --precision bf16 is emulated on this GPU (slow); --precision fp16 "
                                "uses its half-precision units")
    return table[precision], None


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
