"""Background loading of VoCo samples: an endless, seeded stream fed through torch's DataLoader.

Every worker of every rank draws its own stream of windows from a ``numpy.random.Generator``
seeded with ``(seed, rank, worker, start_step)``: ranks and workers never repeat each other, a run
is reproducible for a fixed worker count, and a resumed run continues with fresh windows instead of
replaying the first ones. Cases are drawn uniformly with replacement, which for self-supervised
pre-training on thousands of cases is equivalent to shuffled epochs and needs no sampler state.

Per volume a worker reads the window once (only that region of the memory-mapped case), and
writes every crop once: straight from the window into its slot of the sample, flipped, rotated
and intensity-augmented on the way (:meth:`nnunet_voco.voco.sampling.WindowSampler.sample`, the
one crop cutter, which the tests pin). The DataLoader's
collation then stacks the volumes of a batch into shared memory, and on CUDA its pin-memory
thread copies the batch into page-locked memory so that the loop's ``non_blocking`` copies overlap
with compute.

Workers use one thread each (torch and blosc2) so that they do not compete with the model.

Shared memory: every worker keeps up to :data:`PREFETCH_FACTOR` collated batches in flight, and
batches travel from worker to loop in shared memory (``/dev/shm`` on Linux), so one process needs
:func:`shared_memory_need` bytes of it; the run set-up warns when the machine has less.

Start method: on CUDA the run set-up starts workers with ``forkserver`` (clean processes, no copy
of the CUDA/NCCL state of the training process); the stream is pickled to each worker once.
"""
from __future__ import annotations

import multiprocessing

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from nnunet_voco.voco.augment import AugmentConfig
from nnunet_voco.voco.sampling import WindowSampler

PREFETCH_FACTOR = 4  # batches in flight per worker


def shared_memory_need(batch_bytes: int, num_workers: int) -> int:
    """Bytes of shared memory one process's workers may hold: ``PREFETCH_FACTOR x workers x batch``."""
    return PREFETCH_FACTOR * max(0, num_workers) * int(batch_bytes)


class VoCoStream(IterableDataset):
    """Endless stream of per-volume samples ``{"bases", "targets", "overlaps"}`` as tensors.

    Args:
        sampler: the :class:`WindowSampler`.
        seed: run seed.
        rank: distributed rank.
        start_step: optimiser step the stream starts at (mixes into the seed on resume).
        augment: augmentation applied in the worker, or None to leave it to the caller (on a GPU
            the loop augments the batch on the device instead).
        inplane_axes: axes rot90 rotates in.
    """

    def __init__(self, sampler: WindowSampler, seed: int, rank: int = 0, start_step: int = 0,
                 augment: AugmentConfig | None = None, inplane_axes: tuple[int, int] = (1, 2)):
        self.sampler = sampler
        self.seed, self.rank, self.start_step = int(seed), int(rank), int(start_step)
        self.augment = augment
        self.inplane_axes = inplane_axes

    def generators(self, worker: int = 0) -> tuple[np.random.Generator, torch.Generator]:
        """The window generator and the augmentation generator of one worker."""
        rng = np.random.default_rng([self.seed, self.rank, worker, self.start_step])
        return rng, torch.Generator().manual_seed(int(rng.integers(2**62)))

    def make_sample(self, rng: np.random.Generator, generator: torch.Generator) -> dict:
        """One per-volume sample: :meth:`WindowSampler.sample` (window read once, every crop written once).

        Returns:
            dict with ``bases`` ``(K, C, *crop)``, ``targets`` ``(S, C, *crop)`` (float32 tensors),
            ``overlaps`` ``(S, K)`` and ``padding_share`` (0-d: share of the window that is padding).
        """
        sample = self.sampler.sample(rng, self.augment, generator, self.inplane_axes)
        return {"bases": torch.from_numpy(sample["bases"]), "targets": torch.from_numpy(sample["targets"]),
                "overlaps": torch.from_numpy(sample["overlaps"]),
                "padding_share": torch.tensor(sample["padding_share"], dtype=torch.float32)}

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None:
            torch.set_num_threads(1)
            try:
                import blosc2

                blosc2.set_nthreads(1)
            except ImportError:
                pass
        rng, generator = self.generators(worker)
        while True:
            yield self.make_sample(rng, generator)


def worker_context(start_method: str | None):
    """The multiprocessing context of the workers. ``forkserver``: the server imports this module and the
    nnU-Net door once (torch, numpy, nnU-Net's dataset classes), and every worker forks from it, instead of
    each worker importing them again to unpickle the stream."""
    if start_method != "forkserver":
        return start_method
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, "nnunet_voco.nnunet"])
    return context


def make_loader(stream: VoCoStream, batch_size: int, num_workers: int, pin_memory: bool,
                start_method: str | None = None) -> DataLoader:
    """DataLoader yielding batches ``bases (B, K, C, *crop)``, ``targets (B, S, C, *crop)``, ``overlaps (B, S, K)``.

    Args:
        stream: the per-volume stream.
        batch_size: volumes per batch.
        num_workers: background processes (0 loads in the calling process).
        pin_memory: copy batches into page-locked memory (CUDA), so that ``non_blocking``
            host-to-device copies are asynchronous.
        start_method: how workers start (``fork``, ``forkserver``, ``spawn``); None: the platform's default.
    """
    kwargs = {}
    if num_workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=PREFETCH_FACTOR, multiprocessing_context=worker_context(start_method))
    return DataLoader(stream, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory, **kwargs)
