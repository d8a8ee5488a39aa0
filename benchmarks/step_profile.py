"""Where the time of a VoCo pre-training step goes, and how step time and memory grow.

``build_pipeline``: one process of ``voco_pretrain`` as the loop builds it, through the same
:func:`nnunet_voco.pretrain.run_setup.resolve_run` (encoder from the plans, data-fitted layout,
batch rule, preset defaults, ``VoCoModel``, fused AdamW) and the same loader (``VoCoStream`` +
DataLoader with the default number of workers); only the output folder is left out.

``profile_steps``: the real ``train_step`` and EMA update on that pipeline, timed per phase with
hooks: data wait (blocked in ``next(loader)``), input (host-to-device copy and on-device
augmentation), forward, backward (with gradient clipping), optimiser, EMA. On CUDA every phase
boundary synchronises (profiling only; ``train_step`` itself never syncs).

``scaling``: one step (``train_step`` + EMA, synthetic batches) against the encoder alone
(forward + backward of the pooled stage features, same crops, same autocast) as the number of base
crops and the crop edge grow; the ratio step / encoder is VoCo's overhead (projector, loss, crop
bookkeeping, optimiser). ``step_over_encoder``: the same ratio at the run's own layout and volumes
per step. Peak memory: :func:`benchmarks.peak_memory.peak_memory`.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.peak_memory import peak_memory, wall_ms  # noqa: E402
from nnunet_voco.voco.heads import pool_stage_features  # noqa: E402
from nnunet_voco.voco.sampling import CropLayout  # noqa: E402
from nnunet_voco.voco.synthetic_batches import synthetic_batch  # noqa: E402
from nnunet_voco.pretrain.config import PretrainConfig  # noqa: E402
from nnunet_voco.pretrain.distributed import RunContext, autocast  # noqa: E402
from nnunet_voco.pretrain.loop import train_step  # noqa: E402
from nnunet_voco.pretrain.run_setup import RunSetup, resolve_run  # noqa: E402

PHASES = ("data", "input", "forward", "backward", "optimizer", "ema")
BASE_GRIDS = {4: (1, 2, 2), 9: (1, 3, 3), 16: (1, 4, 4), 27: (3, 3, 3)}


@dataclasses.dataclass
class Pipeline:
    """One process of ``run_pretraining`` without its output folder: the resolved run and its data.

    ``model`` is what ``train_step`` runs (the encoder compiled with ``compile=True``);
    ``optimizer`` starts as the run's and may be swapped (the tests try a non-fused one).
    """

    setup: RunSetup
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loader: object
    generator: torch.Generator

    config = property(lambda self: self.setup.config)
    ctx = property(lambda self: self.setup.ctx)
    layout = property(lambda self: self.setup.layout)
    batch_size = property(lambda self: self.setup.batch_size)
    num_workers = property(lambda self: self.setup.num_workers)
    device_augment = property(lambda self: self.setup.device_augment)
    inplane = property(lambda self: self.setup.inplane)
    amp_dtype = property(lambda self: self.setup.amp_dtype)


def build_pipeline(sources, plans: str, crop_size=None, batch_size: int | None = None, num_workers: int | None = None,
                   device: str = "cpu", precision: str | None = None, compile: bool = False,
                   channels_last: bool = False, preset: str = "v2", head_dim: int | None = None,
                   seed: int = 0) -> Pipeline:
    """Resolve the run and build its loader the way ``run_pretraining`` does (one process, all cases).

    Args:
        sources: ``DatasetSource`` list (the first one's plans define encoder and geometry).
        plans: plans identifier of the sources.
        crop_size: crop edge per axis (default: fitted to the median case, as the loop does).
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
    config = PretrainConfig(datasets=tuple(s.name for s in sources), plans=plans, preset=preset,
                            crop_size=tuple(crop_size) if crop_size else None, batch_size=batch_size,
                            num_workers=num_workers, device=device, precision=precision, compile=compile,
                            channels_last=channels_last, head_dim=head_dim, seed=seed,
                            val_cases=0)  # no held-out monitor: every case feeds the measured stream
    setup = resolve_run(config, sources, RunContext(torch.device(device)))
    return Pipeline(setup, setup.training_model(), setup.optimizer, setup.make_loader(0), setup.augment_generator(0))


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
                stats = train_step(pipe.model, batch, pipe.optimizer, pipe.setup.scaler, pipe.ctx, pipe.amp_dtype,
                                   pipe.config, pipe.device_augment, pipe.generator, pipe.inplane)
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


# ============ scaling ============
def _encoder_pass(encoder: torch.nn.Module, crops: torch.Tensor, amp_dtype=None) -> None:
    """Forward + backward of the encoder alone, under the autocast ``train_step`` uses."""
    encoder.zero_grad(set_to_none=True)
    with autocast(crops.device, amp_dtype):
        maps = encoder(crops)
    pool_stage_features(maps).mean().backward()


def step_over_encoder(pipe: Pipeline, repeats: int = 5) -> dict:
    """One VoCo step (``train_step`` + EMA) over the encoder's own forward + backward, at the run's
    layout and volumes per step (synthetic crops on the device), under the run's autocast.

    Two untimed pairs first (cuDNN autotuning, optimiser state), then ``repeats`` timed pairs, step
    and encoder alternating; medians.

    Returns:
        dict with ``step_ms``, ``encoder_ms``, ``ratio``, ``crops``, ``batch_size``, ``crop_size``,
        ``grid``, ``step_peak_gib`` and ``encoder_peak_gib`` (GiB above what was allocated before; None on
        the CPU).
    """
    device, layout = pipe.ctx.device, pipe.layout
    batch = {k: v.to(device) for k, v in synthetic_batch(layout, pipe.batch_size, _in_channels(pipe.model.encoder))
             .items()}
    crops = torch.cat([batch["targets"].flatten(0, 1), batch["bases"].flatten(0, 1)])

    def step():
        train_step(pipe.model, batch, pipe.optimizer, pipe.setup.scaler, pipe.ctx, pipe.amp_dtype, pipe.config, None,
                   pipe.generator, pipe.inplane)
        pipe.model.update_teacher(pipe.config.ema_momentum)

    def encoder():
        _encoder_pass(pipe.model.encoder, crops, pipe.amp_dtype)

    with peak_memory(device) as step_peak:
        step(), step()
    with peak_memory(device) as enc_peak:
        encoder(), encoder()
    step_ms, enc_ms = [], []
    for _ in range(repeats):
        step_ms.append(wall_ms(step, device))
        enc_ms.append(wall_ms(encoder, device))
    pipe.model.encoder.zero_grad(set_to_none=True)
    s, e = statistics.median(step_ms), statistics.median(enc_ms)
    gib = (lambda mib: mib / 1024) if device.type == "cuda" else (lambda mib: None)
    return {"step_ms": s, "encoder_ms": e, "ratio": s / e, "crops": int(crops.shape[0]), "batch_size": pipe.batch_size,
            "crop_size": list(layout.crop_size), "grid": list(layout.grid), "step_peak_gib": gib(step_peak[0]),
            "encoder_peak_gib": gib(enc_peak[0])}


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
        train_step(pipe.model, batch, pipe.optimizer, pipe.setup.scaler, pipe.ctx, pipe.amp_dtype, config, None,
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
            _encoder_pass(pipe.model.encoder, crops, pipe.amp_dtype)
        step_ms, enc_ms = [], []
        for _ in range(repeats):
            step_ms.append(wall_ms(lambda: step(batch), device))
            enc_ms.append(wall_ms(lambda: _encoder_pass(pipe.model.encoder, crops, pipe.amp_dtype), device))
        pipe.model.encoder.zero_grad(set_to_none=True)
        step_med, enc_med = statistics.median(step_ms), statistics.median(enc_ms)
        rows.append({"sweep": sweep, "bases": k, "crop": edge, "crops": int(crops.shape[0]), "step_ms": step_med,
                     "encoder_ms": enc_med, "step_over_encoder": step_med / enc_med, "step_peak_mib": step_peak[0],
                     "encoder_peak_mib": enc_peak[0]})
    return rows


def _layout(bases: int, edge: int, targets: int) -> CropLayout:
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
