"""Peak memory of a block of code: CUDA allocator peak, or the peak resident set on Linux CPUs; wall time of a call.

On CUDA ``torch.cuda.max_memory_allocated`` above the level before the block. On Linux CPUs the
peak resident set above the level before it: ``/proc/self/clear_refs`` resets the peak (VmHWM),
and glibc is told to return large freed blocks to the system so that the resident set follows
live memory. Used by ``benchmarks/step_profile.py`` (``scaling``); :func:`wall_ms` also by
``benchmarks/loss_benchmark.py``.
"""
from __future__ import annotations

import contextlib
import ctypes
import time

import torch


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


@contextlib.contextmanager
def peak_memory(device: torch.device):
    """Measures the peak memory of the enclosed block above the level before it (MiB in ``result[0]``).

    CUDA: ``max_memory_allocated``. CPU (Linux): peak resident set, with glibc's large freed blocks
    returned to the system; ``result[0]`` stays None where neither is available.
    """
    result = [None]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result[0] = (torch.cuda.max_memory_allocated(device) - before) / 2**20
        return
    libc = _libc()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set (VmHWM)
        usable = libc is not None
    except OSError:
        usable = False
    if usable:
        libc.mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD: large blocks via mmap, unmapped when freed
        libc.malloc_trim(0)
        before = _status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    try:
        yield result
    finally:
        if usable:
            result[0] = (_status_kib("VmHWM") - before) / 1024
            libc.mallopt(-3, 32 * 2**20)  # back to glibc's largest dynamic threshold


def wall_ms(fn, device) -> float:
    """Wall time of one call of ``fn`` in milliseconds (synchronised on CUDA); ``device``: torch device or string."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 1e3 * (time.perf_counter() - start)
