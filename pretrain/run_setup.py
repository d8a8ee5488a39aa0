"""One run of ``voco_pretrain``, resolved once: encoder, geometry, batch, preset defaults, model, optimiser.

:func:`resolve_run` turns a :class:`~nnunet_voco.pretrain.config.PretrainConfig` (``None`` = derive)
and the opened datasets into a frozen :class:`RunSetup` that the loop
(:func:`nnunet_voco.pretrain.loop.run_pretraining`) and the benchmarks (``benchmarks/step_profile.py``,
``gpu.py``) both use, so a benchmark measures the run, not a copy of its set-up. What it decides:

* the encoder (:func:`nnunet_voco.encoders.build_encoder`), seeded with ``seed + rank``;
* the layout (:func:`resolve_layout`): crop size and grid fitted to the median case by the
  encoder's own rule (:meth:`EncoderBundle.fit_layout`) unless ``--crop_size`` / ``--grid`` are given;
* the volumes per step (:func:`resolve_batch_size`) and the in-plane axes rot90 uses
  (:func:`nnunet_voco.voco.geometry.inplane_axes`, the isotropy test that chose the grid);
* the preset defaults (:mod:`nnunet_voco.voco.presets`): projector width, embedding dropout, shift;
* the held-out cases of the position monitor, the data workers (per process: the machine's CPUs
  shared by its ranks) and the warm-up;
* model, fused AdamW, autocast dtype (bf16 only where the GPU has it) and GradScaler, cuDNN
  autotuning.

Warnings it returns for the log: v2 with one volume per process (the inter-volume term then pairs
a volume with itself), too little ``/dev/shm`` for the data workers' batches in flight.

Nothing is written here: the loop claims the output folder afterwards, so bad input fails before
any file exists.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Optional

import numpy as np
import torch

from nnunet_voco.encoders import build_encoder
from nnunet_voco.encoders.bundle import EncoderBundle
from nnunet_voco.nnunet import UserInputError
from nnunet_voco.nnunet.loader import PREFETCH_FACTOR, VoCoStream, make_loader, shared_memory_need
from nnunet_voco.pretrain.distributed import RunContext, configure_backends, resolve_precision
from nnunet_voco.pretrain.run_schedule import default_warmup
from nnunet_voco.voco import geometry
from nnunet_voco.voco.augment import AugmentConfig
from nnunet_voco.voco.loss import VoCoLoss
from nnunet_voco.voco.model import VoCoModel
from nnunet_voco.voco.monitor import MONITOR_SEED, FixedWindows, MonitorWindows, split_cases
from nnunet_voco.voco.presets import Preset, get_preset
from nnunet_voco.voco.sampling import CropLayout, WindowSampler
from nnunet_voco.weights.pretrain_init import initialise_from


def case_shapes(sources, limit: int = 256) -> list[tuple[str, tuple[int, int, int]]]:
    """Spatial shapes of the cases (an evenly spaced subset of ``limit`` for large pools).

    Reads only array headers through nnU-Net's dataset classes (blosc2/numpy memory maps).
    """
    cases = [(s, ident) for s in sources for ident in s.identifiers]
    checked = [cases[i] for i in np.unique(np.linspace(0, len(cases) - 1, min(limit, len(cases))).astype(int))]
    datasets = {id(s): s.open() for s in sources}
    return [(f"{s.name}/{ident}", tuple(int(v) for v in datasets[id(s)].load_case(ident)[0].shape[1:]))
            for s, ident in checked]


def median_case_shape(shapes) -> tuple[int, int, int]:
    """The per-axis median of the ``(name, spatial shape)`` pairs of :func:`case_shapes` (integer voxels)."""
    return tuple(int(v) for v in np.median([shape for _, shape in shapes], axis=0))


def small_case_warning(shapes, crop_size) -> Optional[str]:
    """The warning about cases smaller than a crop on some axis (they are padded), or None."""
    small = [(name, shape) for name, shape in shapes if any(a < c for a, c in zip(shape, crop_size))]
    if not small:
        return None
    return (f"VoCo: warning: {len(small)} of {len(shapes)} checked cases are smaller than the crop "
            f"{tuple(crop_size)} on some axis and get padded with their minimum (first: {small[0][0]} "
            f"{small[0][1]}); pass a smaller --crop_size if that is much of the data")


def resolve_layout(config, configuration_manager, bundle: EncoderBundle, median_shape) -> tuple[CropLayout, str]:
    """Crop size and grid (fitted to the median case unless given) and the number of targets.

    Returns:
        The layout and a one-line account of the rule that produced it (printed at start).
    """
    spacing = configuration_manager.spacing
    if config.crop_size is None:
        crop, grid, rule = bundle.fit_layout(median_shape, configuration_manager.patch_size, spacing, config.grid)
    else:
        crop, grid = tuple(config.crop_size), tuple(config.grid or geometry.default_grid(spacing, 3, median_shape))
        rule = (f"crop size {crop} given (--crop_size), grid {grid} "
                + ("given (--grid)" if config.grid else "(default: 3x3 in-plane)"))
    crop = bundle.validate_crop(crop, spacing)  # every crop, given or fitted (the monitor's too): stride, deepest map
    geometry.window_size(crop, grid)  # validates the grid
    if config.num_targets < 1:
        raise UserInputError(f"--num_targets {config.num_targets} must be >= 1")
    return CropLayout(tuple(crop), tuple(grid), config.num_targets), rule


def resolve_batch_size(config, configuration_manager, layout: CropLayout) -> int:
    """Volumes per step and process.

    Rule: nnU-Net sized ``batch_size`` patches of the full U-Net for its GPU-memory target. An
    encoder-only pass costs about half of a full U-Net pass per voxel, and one VoCo volume passes
    ``S + K`` crops, so a volume costs ``(S + K) / 2 * crop_voxels / patch_voxels`` supervised
    samples; the default is the plans' batch size divided by that, at least 1.
    """
    if config.batch_size is not None:
        if config.batch_size < 1:
            raise UserInputError(f"--batch_size {config.batch_size} must be >= 1")
        return config.batch_size
    ratio = np.prod(layout.crop_size) / np.prod(configuration_manager.patch_size)
    cost = (layout.num_targets + layout.num_bases) / 2 * ratio
    return max(1, int(configuration_manager.batch_size // cost))


def held_out_count(config, num_cases: int) -> tuple[int, Optional[str]]:
    """Cases to hold out for the monitor (``--val_cases``, never the last training case) and a warning."""
    if config.val_cases < 0 or config.val_every < 1 or config.val_windows < 1:
        raise UserInputError(f"--val_cases {config.val_cases}, --val_every {config.val_every} and --val_windows "
                             f"{config.val_windows} must be >= 0, >= 1 and >= 1")
    n = min(config.val_cases, num_cases - 1)
    warning = None
    if n < config.val_cases:
        warning = (f"VoCo: warning: only {num_cases} case(s): holding out {n} instead of --val_cases "
                   f"{config.val_cases}" + ("; the held-out position monitor is off" if n == 0 else ""))
    return max(n, 0), warning


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask: what SLURM or a container grants), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_num_workers(local_world_size: int = 1) -> int:
    """Data workers per process when ``--num_workers`` is not given: ``min(4, cpus / local ranks - 1)``,
    so that the ranks of one machine share its CPUs (one core each for the rank itself)."""
    return max(0, min(4, usable_cpus() // max(1, local_world_size) - 1))


V2_ONE_VOLUME_WARNING = (
    "VoCo: warning: preset v2 with 1 volume per step and process: the inter-volume term pairs each volume with "
    "the next one in the batch, so with one volume it pairs the volume with itself and contrasts no two volumes; "
    "pass --batch_size 2 or more (or --inter_weight 0 to drop the term)")


def one_volume_warning(config, batch_size: int) -> Optional[str]:
    """:data:`V2_ONE_VOLUME_WARNING` when v2's inter-volume term would pair a volume with itself, else None.

    The v2 loss pairs volume ``i`` with ``i + 1`` within a process's batch (``roll`` over the batch,
    as the official code does), also under DDP.
    """
    if config.preset == "v2" and batch_size == 1 and config.inter_weight > 0:
        return V2_ONE_VOLUME_WARNING
    return None


def shared_memory_warning(batch_bytes: int, num_workers: int, local_world_size: int,
                          folder: str = "/dev/shm") -> Optional[str]:
    """A warning when the data workers' batches in flight on this machine exceed the free space of
    ``folder`` (the workers hand batches over in shared memory), else None.

    Need: :data:`PREFETCH_FACTOR` batches per worker, per process, times the processes of this
    machine (:func:`nnunet_voco.nnunet.loader.shared_memory_need`). A full ``/dev/shm`` kills the
    workers with a bus error (docker's default is 64 MB).
    """
    if num_workers <= 0 or not os.path.isdir(folder):
        return None
    need = shared_memory_need(batch_bytes, num_workers) * max(1, local_world_size)
    free = shutil.disk_usage(folder).free
    if need <= free:
        return None
    fits = int(free // (shared_memory_need(batch_bytes, 1) * max(1, local_world_size)))
    return (f"VoCo: warning: the data workers keep up to {PREFETCH_FACTOR} x {num_workers} batches of "
            f"{batch_bytes / 2**20:.0f} MiB in {folder} per process ({local_world_size} process(es) on this machine: "
            f"{need / 2**30:.2f} GiB), but it has {free / 2**30:.2f} GiB free; workers die with a bus error when it "
            f"fills up: pass --num_workers {fits} or enlarge it (docker run --shm-size={int(-(-need // 2**30)) + 1}g)")


@dataclasses.dataclass(frozen=True)
class RunSetup:
    """Everything one process of a run is made of, before its output folder and its first step."""

    config: object  # the PretrainConfig it was resolved from
    ctx: RunContext
    sources: list
    bundle: EncoderBundle
    shapes: list  # (name, spatial shape) of the checked cases
    median_shape: tuple[int, int, int]
    layout: CropLayout
    geometry_rule: str  # how the layout was chosen (printed at start)
    batch_size: int  # volumes per step and process
    inplane: tuple[int, int]  # the axes rot90 rotates in
    augment: AugmentConfig
    num_workers: int  # per process
    warmup_steps: int
    train_cases: list  # (source index, identifier)
    val_cases: list
    warnings: tuple[str, ...]  # for the run log (the setup writes nothing itself)
    model: VoCoModel
    optimizer: torch.optim.Optimizer
    amp_dtype: Optional[torch.dtype]
    scaler: Optional[torch.amp.GradScaler]

    @property
    def on_device_aug(self) -> bool:
        """Augment the batch on the GPU (else in the data workers)."""
        return self.ctx.device.type == "cuda"

    @property
    def device_augment(self) -> Optional[AugmentConfig]:
        """The augmentation ``train_step`` applies on the device (None: the data workers applied it)."""
        return self.augment if self.on_device_aug else None

    @property
    def batch_bytes(self) -> int:
        """Bytes of one batch as the data workers hand it over (float32 crops, overlaps, padding share)."""
        layout, b = self.layout, self.batch_size
        crops = b * (layout.num_bases + layout.num_targets) * self.sources[0].num_input_channels
        return 4 * (crops * int(np.prod(layout.crop_size)) + b * layout.num_targets * layout.num_bases + b)

    @property
    def worker_start_method(self) -> Optional[str]:
        """``forkserver`` on CUDA: data workers start from a clean server process instead of a fork of
        this one, which holds CUDA and NCCL state (threads, handles) that a fork copies half-way;
        None (the platform default, fork on Linux) on CPU, where forking is safe and faster."""
        return "forkserver" if self.ctx.device.type == "cuda" else None

    def make_loader(self, start_step: int = 0):
        """The training batches of this rank from ``start_step`` on (endless DataLoader)."""
        sampler = WindowSampler(self.sources, self.layout, self.config.foreground_probability, self.train_cases)
        stream = VoCoStream(sampler, self.config.seed, self.ctx.rank, start_step,
                            None if self.on_device_aug else self.augment, self.inplane)
        return make_loader(stream, self.batch_size, self.num_workers, pin_memory=self.ctx.device.type == "cuda",
                           start_method=self.worker_start_method)

    def training_model(self) -> torch.nn.Module:
        """The module ``train_step`` runs: DDP-wrapped under torchrun, its encoder compiled with ``--compile``.

        Call it after a resumed state was loaded into :attr:`model` (DDP broadcasts rank 0's weights):
        wrappers come after loading, and :attr:`model` (what is saved) stays unwrapped. The compiled
        encoder is kept outside the module tree (:meth:`VoCoModel.compile_encoder`), so no state dict
        carries ``_orig_mod.``.
        """
        if self.config.compile and not self.model.compiled:
            self.model.compile_encoder()
        if not self.ctx.distributed:
            return self.model
        ids = [self.ctx.local_rank] if self.ctx.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    def augment_generator(self, start_step: int = 0) -> torch.Generator:
        """The CPU generator of the on-device augmentation (one stream per rank and resume step)."""
        return torch.Generator().manual_seed(self.config.seed * 1000003 + self.ctx.rank * 7919 + start_step)

    def held_out_windows(self) -> Optional[MonitorWindows]:
        """The position monitor's fixed windows (None when off): ``--val_windows`` from the held-out
        cases and as many, drawn the same way, from training cases (memorising vs learning). Every rank
        builds the same windows (fixed seed) and evaluates its share of them."""
        if not self.val_cases:
            return None

        def windows(cases, seed):
            sampler = WindowSampler(self.sources, self.layout, self.config.foreground_probability, cases)
            return FixedWindows(sampler, self.config.val_windows, seed=seed)

        return MonitorWindows(windows(self.val_cases, MONITOR_SEED),
                              windows(self.train_cases, MONITOR_SEED + 1) if self.train_cases else None)

    def describe(self, folder: str) -> list[str]:
        """The start lines of the run log: what is trained on what, the geometry rule, the chosen values."""
        config, layout, ctx = self.config, self.layout, self.ctx
        return [
            f"VoCo pre-training: preset {config.preset}, encoder {config.encoder} ({self.bundle.embedding_dim}-d "
            f"embedding), datasets {', '.join(s.name for s in self.sources)} ({len(self.train_cases)} training + "
            f"{len(self.val_cases)} held-out cases), plans {config.plans}, configuration {config.configuration}",
            f"VoCo: geometry (median case {self.median_shape} of {len(self.shapes)} checked cases): "
            f"{self.geometry_rule}",
            f"VoCo: crop {layout.crop_size}, grid {layout.grid} ({layout.num_bases} base + {layout.num_targets} "
            f"target crops, window {layout.window}), {self.batch_size} volumes/step/process x {ctx.world_size} "
            f"processes, device {ctx.device}, precision {self.amp_dtype or 'fp32'}, {self.num_workers} data "
            f"workers, output {folder}"]

    def resolved(self) -> dict:
        """The derived values written into ``config.json`` next to the flags."""
        return {"batch_size": self.batch_size, "crop_size": self.layout.crop_size, "grid": self.layout.grid,
                "warmup_steps": self.warmup_steps, "world_size": self.ctx.world_size,
                "median_case_shape": self.median_shape, "geometry_rule": self.geometry_rule,
                "val_cases": [f"{self.sources[i].name}/{ident}" for i, ident in self.val_cases]}


def _build_model(config, ctx: RunContext, bundle: EncoderBundle, preset: Preset) -> VoCoModel:
    torch.manual_seed(config.seed + ctx.rank)
    loss = VoCoLoss(preset.name, config.pos_weight, config.neg_weight, config.reg_weight, config.inter_weight)
    dropout = config.embedding_dropout if config.embedding_dropout is not None else preset.embedding_dropout
    model = VoCoModel(bundle, preset.name, loss, config.head_dim, dropout, config.row_dropout).to(ctx.device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    if ctx.distributed and ctx.device.type == "cuda":  # before the optimizer sees the parameters;
        # student and teacher alike; SyncBatchNorm needs GPU tensors, so gloo ranks keep per-rank statistics in both
        model.convert_sync_batchnorm()
    return model


def resolve_run(config, sources, ctx: RunContext) -> RunSetup:
    """Resolve every derived value of a run and build its model and optimiser (see the module docstring).

    Args:
        config: the run's ``PretrainConfig``.
        sources: the opened datasets (:func:`nnunet_voco.nnunet.open_datasets`); the first one's
            plans define encoder and geometry.
        ctx: the process context (device, rank, world size).

    Raises:
        UserInputError / ValueError: a flag the data or the encoder cannot satisfy.
    """
    first = sources[0]
    preset = get_preset(config.preset)
    torch.manual_seed(config.seed + ctx.rank)  # the encoder's initialisation too: seeds give matched arms
    bundle = build_encoder(config.encoder, first.plans_manager, first.configuration_manager, first.num_input_channels,
                           config.swin_feature_size, config.gradient_checkpointing)
    shapes = case_shapes(sources)
    median_shape = median_case_shape(shapes)
    layout, rule = resolve_layout(config, first.configuration_manager, bundle, median_shape)
    batch_size = resolve_batch_size(config, first.configuration_manager, layout)
    all_cases = [(i, ident) for i, src in enumerate(sources) for ident in src.identifiers]
    n_held, held_warning = held_out_count(config, len(all_cases))
    train_cases, val_cases = split_cases(all_cases, [src.name for src in sources], n_held)
    shift_prob = config.shift_prob if config.shift_prob is not None else preset.shift_prob
    model = _build_model(config, ctx, bundle, preset)
    init_lines = initialise_from(model, bundle, config.init, first, config.plans, config.configuration) \
        if config.init else ()  # the monitor's step 0 then measures these weights; --c loads its state over them
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay,
                                  fused=ctx.device.type in ("cpu", "cuda"))  # found_inf: skips without a host sync
    amp_dtype, precision_note = resolve_precision(config.precision, ctx.device)
    configure_backends(ctx.device, config.cudnn_benchmark)
    num_workers = (config.num_workers if config.num_workers is not None
                   else default_num_workers(ctx.local_world_size))
    setup = RunSetup(
        config=config, ctx=ctx, sources=list(sources), bundle=bundle, shapes=shapes, median_shape=median_shape,
        layout=layout, geometry_rule=rule, batch_size=batch_size,
        inplane=geometry.inplane_axes(layout.grid, first.configuration_manager.spacing, median_shape),
        augment=AugmentConfig(config.flip_prob, config.rot90_prob, shift_prob, scale_prob=config.scale_prob),
        num_workers=num_workers,
        warmup_steps=config.warmup_steps if config.warmup_steps is not None else default_warmup(config.num_steps),
        train_cases=train_cases, val_cases=val_cases,
        warnings=tuple(w for w in (held_warning, precision_note, one_volume_warning(config, batch_size)) if w)
        + init_lines,
        model=model, optimizer=optimizer, amp_dtype=amp_dtype,
        scaler=torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None)
    shm = shared_memory_warning(setup.batch_bytes, num_workers, ctx.local_world_size)
    return dataclasses.replace(setup, warnings=setup.warnings + (shm,)) if shm else setup
