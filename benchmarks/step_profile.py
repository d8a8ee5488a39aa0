"""Where the time of a VoCo pre-training step goes, and how step time and memory grow.

``profile_steps``: the real pieces of ``voco_pretrain`` (nnU-Net plans -> encoder, ``VoCoModel``,
fused AdamW, ``VoCoStream`` + DataLoader with the default number of workers, ``train_step``, EMA
update), timed per phase with hooks: data wait (blocked in ``next(loader)``), input (host-to-device
copy and on-device augmentation), forward, backward (with gradient clipping), optimiser, EMA. On
CUDA every phase boundary synchronises (profiling only; ``train_step`` itself never syncs).

``scaling``: one step (``train_step`` + EMA, synthetic batches) against the encoder alone
(forward + backward of the pooled stage features, same crops) as the number of base crops and the
crop edge grow; the ratio step / encoder is VoCo's overhead (projector, loss, crop bookkeeping,
optimiser). Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA; on Linux CPUs the peak
resident set above the level before the step (``/proc/self/clear_refs`` resets the peak; glibc
is told to return large freed blocks so that the resident set follows live memory).
"""
from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nnunet_voco.voco import geometry  # noqa: E402
from nnunet_voco.voco.augment import AugmentConfig  # noqa: E402
from nnunet_voco.encoders import build_encoder  # noqa: E402
from nnunet_voco.voco.heads import pool_stage_features  # noqa: E402
from nnunet_voco.nnunet.loader import VoCoStream, make_loader  # noqa: E402
from nnunet_voco.voco.loss import VoCoLoss  # noqa: E402
from nnunet_voco.voco.model import VoCoModel  # noqa: E402
from nnunet_voco.pretrain.config import PretrainConfig  # noqa: E402
from nnunet_voco.pretrain.distributed import RunContext, autocast_dtype  # noqa: E402
from nnunet_voco.pretrain.loop import case_shapes, resolve_batch_size, resolve_layout, train_step  # noqa: E402
from nnunet_voco.voco.sampling import WindowSampler  # noqa: E402

PHASES = ("data", "input", "forward", "backward", "optimizer", "ema")
BASE_GRIDS = {4: (1, 2, 2), 9: (1, 3, 3), 16: (1, 4, 4), 27: (3, 3, 3)}


def default_num_workers() -> int:
    """The loop's default data workers per process: ``min(4, cpus - 1)``."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


@dataclasses.dataclass
class Pipeline:
    """Everything ``run_pretraining`` builds for one process, without its output folder."""

    model: VoCoModel
    optimizer: torch.optim.Optimizer
    loader: object
    config: PretrainConfig
    ctx: RunContext
    layout: object
    batch_size: int
    num_workers: int
    augment: AugmentConfig
    on_device_aug: bool
    generator: torch.Generator
    inplane: tuple[int, int]
    amp_dtype: torch.dtype | None


def build_pipeline(sources, plans: str, crop_size=None, batch_size: int | None = None, num_workers: int | None = None,
                   device: str = "cpu", precision: str | None = None, compile: bool = False,
                   channels_last: bool = False, preset: str = "v2", head_dim: int | None = None,
                   seed: int = 0) -> Pipeline:
    """Build model, optimiser and data loader the way ``run_pretraining`` does (one process).

    Args:
        sources: ``DatasetSource`` list (the first one's plans define encoder and geometry).
        plans: plans identifier of the sources.
        crop_size: crop edge per axis (default: the plans' patch size).
        batch_size: volumes per step (default: derived from the plans, as the loop does).
        num_workers: data workers (default: the loop's ``min(4, cpus - 1)``).
        device: ``cpu`` or ``cuda``.
        precision: ``bf16`` / ``fp16`` / ``fp32`` (default: bf16 on CUDA, fp32 elsewhere).
        compile: ``torch.compile`` the encoder.
        channels_last: channels_last_3d memory format.
        preset: ``v2`` or ``v1``.
        head_dim: projector width (default per preset).
        seed: run seed.
    """
    first = sources[0]
    config = PretrainConfig(datasets=tuple(s.name for s in sources), plans=plans, preset=preset,
                            crop_size=tuple(crop_size) if crop_size else None, batch_size=batch_size,
                            num_workers=num_workers, device=device, precision=precision, compile=compile,
                            channels_last=channels_last, head_dim=head_dim, seed=seed)
    ctx = RunContext(torch.device(device))
    bundle = build_encoder(config.encoder, first.plans_manager, first.configuration_manager,
                           first.num_input_channels)
    median = tuple(int(v) for v in np.median([shape for _, shape in case_shapes(sources)], axis=0))
    layout, _ = resolve_layout(config, first.configuration_manager, bundle.divisor, median)
    batch = resolve_batch_size(config, first.configuration_manager, layout)
    torch.manual_seed(seed)
    model = VoCoModel(bundle, preset, VoCoLoss(preset), head_dim, 0.2 if preset == "v2" else 0.0).to(ctx.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay,
                                  fused=ctx.device.type in ("cpu", "cuda"))
    if compile:
        model.encoder = torch.compile(model.encoder)
    augment = AugmentConfig(config.flip_prob, config.rot90_prob, 0.5 if preset == "v2" else 0.1)
    spacing = first.configuration_manager.spacing
    coarse = int(np.argmax(spacing))
    inplane = tuple(a for a in range(3) if a != (coarse if len(set(spacing)) > 1 else 0))
    on_device = ctx.device.type == "cuda"
    workers = default_num_workers() if num_workers is None else num_workers
    stream = VoCoStream(WindowSampler(sources, layout, config.foreground_probability), seed, 0, 0,
                        None if on_device else augment, inplane)
    loader = make_loader(stream, batch, workers, pin_memory=on_device)
    return Pipeline(model, optimizer, loader, config, ctx, layout, batch, workers, augment, on_device,
                    torch.Generator().manual_seed(seed), inplane, autocast_dtype(precision, ctx.device))


class _Clock:
    """Phase time stamps set from hooks; synchronises CUDA first so that device work is attributed."""

    def __init__(self, device: torch.device):
        self.device, self.marks = device, {}

    def mark(self, name: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.marks[name] = time.perf_counter()


@contextlib.contextmanager
def _phase_hooks(model: torch.nn.Module, optimizer: torch.optim.Optimizer, clock: _Clock):
    handles = [model.register_forward_pre_hook(lambda *a: clock.mark("forward")),
               model.register_forward_hook(lambda *a: clock.mark("backward")),
               optimizer.register_step_pre_hook(lambda *a: clock.mark("optimizer"))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def profile_steps(pipe: Pipeline, steps: int = 5, warmup: int = 2) -> dict:
    """Per-phase time of ``steps`` training steps (after ``warmup``), through the real loader.

    Returns:
        dict with ``ms_per_step``, ``share`` (phase -> fraction of the step, summing to 1),
        ``ms`` (phase -> mean milliseconds), ``steps``, ``batch_size``, ``num_workers``,
        ``crops_per_step``, ``volumes_per_s``, ``all_finite``.
    """
    clock = _Clock(pipe.ctx.device)
    totals = dict.fromkeys(PHASES, 0.0)
    finite = []
    iterator = iter(pipe.loader)
    try:
        with _phase_hooks(pipe.model, pipe.optimizer, clock):
            for i in range(warmup + steps):
                clock.marks = {}
                clock.mark("data")
                batch = next(iterator)
                clock.mark("input")
                stats = train_step(pipe.model, batch, pipe.optimizer, None, pipe.ctx, pipe.amp_dtype, pipe.config,
                                   pipe.augment if pipe.on_device_aug else None, pipe.generator, pipe.inplane)
                clock.mark("ema")
                pipe.model.update_teacher(pipe.config.ema_momentum)
                clock.mark("end")
                finite.append(stats["finite"])
                if i >= warmup:
                    m = clock.marks
                    m.setdefault("optimizer", m["ema"])  # an optimiser that skipped without calling step()
                    bounds = ("data", "input", "forward", "backward", "optimizer", "ema", "end")
                    for phase, (a, b) in zip(PHASES, zip(bounds, bounds[1:])):
                        totals[phase] += m[b] - m[a]
    finally:
        if hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
    total = sum(totals.values())
    layout = pipe.layout
    return {"ms_per_step": 1e3 * total / steps, "share": {k: v / total for k, v in totals.items()},
            "ms": {k: 1e3 * v / steps for k, v in totals.items()}, "steps": steps, "batch_size": pipe.batch_size,
            "num_workers": pipe.num_workers, "crop_size": list(layout.crop_size), "grid": list(layout.grid),
            "crops_per_step": pipe.batch_size * (layout.num_bases + layout.num_targets),
            "volumes_per_s": pipe.batch_size * steps / total, "all_finite": bool(torch.stack(finite).all())}


# ============ memory ============
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


# ============ scaling ============
def synthetic_batch(layout, batch_size: int, channels: int, seed: int = 0) -> dict:
    """Random crops and the exact overlap targets of randomly placed target crops."""
    rng = np.random.default_rng(seed)
    crop = tuple(layout.crop_size)
    bases_off = geometry.base_crop_offsets(crop, layout.grid)
    overlaps = np.stack([geometry.overlap_matrix(geometry.sample_target_offsets(layout.window, crop,
                                                                                layout.num_targets, rng),
                                                 bases_off, crop) for _ in range(batch_size)])
    gen = torch.Generator().manual_seed(seed)
    return {"bases": torch.randn((batch_size, layout.num_bases, channels) + crop, generator=gen),
            "targets": torch.randn((batch_size, layout.num_targets, channels) + crop, generator=gen),
            "overlaps": torch.from_numpy(overlaps)}


def _encoder_pass(encoder: torch.nn.Module, crops: torch.Tensor) -> None:
    encoder.zero_grad(set_to_none=True)
    pool_stage_features(encoder(crops)).mean().backward()


def _wall_ms(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 1e3 * (time.perf_counter() - start)


def scaling(pipe: Pipeline, base_counts=(4, 9, 16, 27), crop_edges=(32, 48, 64), base_crop_edge: int | None = None,
            volumes: int = 1, repeats: int = 1) -> list[dict]:
    """Step and encoder-only time and peak memory vs base crops (at one edge) and vs crop edge (9 bases).

    Per point: one untimed step and one untimed encoder pass (they measure the peak memory and
    warm up kernels for the new shapes), then ``repeats`` timed pairs, step and encoder
    alternating so that a change of machine load hits both.

    Args:
        pipe: a pipeline (its model and optimiser are used; the loader is not).
        base_counts: numbers of base crops (grids from :data:`BASE_GRIDS`).
        crop_edges: isotropic crop edges (multiples of the encoder's divisor).
        base_crop_edge: crop edge of the base-count sweep (default: the smallest of ``crop_edges``).
        volumes: volumes per step.
        repeats: timed pairs per point (median).

    Returns:
        One dict per point: ``sweep`` (``bases`` | ``crop``), ``bases``, ``crop``, ``crops``,
        ``step_ms``, ``encoder_ms``, ``step_over_encoder``, ``step_peak_mib``, ``encoder_peak_mib``.
    """
    base_edge = base_crop_edge or min(crop_edges)
    points = [("bases", k, base_edge) for k in base_counts] + [("crop", 9, c) for c in crop_edges]
    channels = _in_channels(pipe.model.encoder)
    device, rows = pipe.ctx.device, []
    config = dataclasses.replace(pipe.config, channels_last=False)

    def step(batch):
        train_step(pipe.model, batch, pipe.optimizer, None, pipe.ctx, pipe.amp_dtype, config, None,
                   pipe.generator, pipe.inplane)
        pipe.model.update_teacher(pipe.config.ema_momentum)

    warm = synthetic_batch(_layout(base_counts[0] if base_counts else 9, base_edge, pipe.layout.num_targets), volumes,
                           channels)
    step({key: v.to(device) for key, v in warm.items()})  # creates the optimiser state outside the measurements
    for sweep, k, edge in points:
        layout = _layout(k, edge, pipe.layout.num_targets)
        batch = {key: v.to(device) for key, v in synthetic_batch(layout, volumes, channels).items()}
        crops = torch.cat([batch["targets"].flatten(0, 1), batch["bases"].flatten(0, 1)])
        with peak_memory(device) as step_peak:
            step(batch)
        with peak_memory(device) as enc_peak:
            _encoder_pass(pipe.model.encoder, crops)
        step_ms, enc_ms = [], []
        for _ in range(repeats):
            step_ms.append(_wall_ms(lambda: step(batch), device))
            enc_ms.append(_wall_ms(lambda: _encoder_pass(pipe.model.encoder, crops), device))
        pipe.model.encoder.zero_grad(set_to_none=True)
        step_med, enc_med = statistics.median(step_ms), statistics.median(enc_ms)
        rows.append({"sweep": sweep, "bases": k, "crop": edge, "crops": int(crops.shape[0]), "step_ms": step_med,
                     "encoder_ms": enc_med, "step_over_encoder": step_med / enc_med, "step_peak_mib": step_peak[0],
                     "encoder_peak_mib": enc_peak[0]})
    return rows


def _layout(bases: int, edge: int, targets: int):
    from nnunet_voco.voco.sampling import CropLayout

    return CropLayout((edge, edge, edge), BASE_GRIDS[bases], targets)


def _in_channels(encoder: torch.nn.Module) -> int:
    first = next(m for m in encoder.modules() if isinstance(m, torch.nn.Conv3d))
    return int(first.in_channels)


def narrowed_sources(sources, width_divisor: int, configuration: str = "3d_fullres"):
    """Copies of ``sources`` whose plans have ``features_per_stage`` divided by ``width_divisor`` (min 4)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    out = []
    for source in sources:
        plans = copy.deepcopy(source.plans_manager.plans)
        for cfg in plans["configurations"].values():
            kwargs = cfg.get("architecture", {}).get("arch_kwargs", {})
            if "features_per_stage" in kwargs:
                kwargs["features_per_stage"] = [max(4, f // width_divisor) for f in kwargs["features_per_stage"]]
        pm = PlansManager(plans)
        out.append(dataclasses.replace(source, plans_manager=pm, configuration_manager=pm.get_configuration(
            configuration)))
    return out
