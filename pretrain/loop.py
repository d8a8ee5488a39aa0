"""``run_pretraining(config)``: the VoCo pre-training loop, read top to bottom.

One step: a batch of volumes (each ``K`` base + ``S`` target crops with overlap targets) ->
:class:`~nnunet_voco.model.VoCoModel` -> losses -> backward -> gradient clipping -> AdamW with
warm-up + cosine learning rate -> EMA teacher update. Runs on CPU, one GPU, or many under torchrun
(DDP; teachers take no gradients, so no ``find_unused_parameters``).
"""
from __future__ import annotations

import math
import os
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from nnunet_voco import geometry
from nnunet_voco.augment import AugmentConfig, augment_crops
from nnunet_voco.ema import momentum_at
from nnunet_voco.encoders import build_encoder
from nnunet_voco.loader import VoCoStream, make_loader
from nnunet_voco.loss import VoCoLoss
from nnunet_voco.model import VoCoModel
from nnunet_voco.nnunet import UserInputError, open_datasets, voco_output_folder
from nnunet_voco.progress_plot import plot_progress
from nnunet_voco.sampling import CropLayout, WindowSampler
from nnunet_voco.schedule import lr_at
from nnunet_voco.pretrain import outputs
from nnunet_voco.pretrain.distributed import StopRequest, autocast, autocast_dtype, init_context

LOGGED = ("loss", "pos", "neg", "reg", "inter", "logit_overlap_mean", "logit_zero_mean",
          "base_similarity_mean", "embedding_std")


class Interrupted(Exception):
    """Raised after the state was saved on SIGTERM/SIGINT; ``exit_code`` is 128 + signal number."""

    def __init__(self, exit_code: int):
        super().__init__(f"interrupted (exit code {exit_code})")
        self.exit_code = exit_code


def resolve_layout(config, configuration_manager, divisor, log) -> CropLayout:
    """Crop size (default: the plans' patch size), grid (default 3x3 in-plane) and targets."""
    crop = tuple(config.crop_size or configuration_manager.patch_size)
    if tuple(divisor) == (32, 32, 32) and config.crop_size is None:
        rounded = tuple(max(32, int(round(c / 32)) * 32) for c in crop)
        if rounded != crop:
            log(f"VoCo: crop size {crop} rounded to multiples of 32 for the Swin encoder: {rounded}")
        crop = rounded
    crop = geometry.validate_crop_size(crop, divisor)
    grid = tuple(config.grid or geometry.default_grid(configuration_manager.spacing))
    geometry.window_size(crop, grid)  # validates the grid
    if config.num_targets < 1:
        raise UserInputError(f"--num_targets {config.num_targets} must be >= 1")
    return CropLayout(crop, grid, config.num_targets)


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


def train_step(model, batch, optimizer, scaler, ctx, amp_dtype, config, augment, generator, inplane) -> dict:
    """Forward, backward, clip and optimiser step; returns detached losses (skips non-finite steps)."""
    targets = batch["targets"].to(ctx.device, non_blocking=True)
    bases = batch["bases"].to(ctx.device, non_blocking=True)
    overlaps = batch["overlaps"].to(ctx.device, non_blocking=True)
    if augment is not None:  # on the accelerator: one batched op per transform
        targets = augment_crops(targets.flatten(0, 1), augment, generator, inplane).view_as(targets)
        bases = augment_crops(bases.flatten(0, 1), augment, generator, inplane).view_as(bases)
    if config.channels_last:
        targets, bases = (t.contiguous(memory_format=torch.channels_last_3d) for t in (targets, bases))
    optimizer.zero_grad(set_to_none=True)
    with autocast(ctx.device, amp_dtype):
        out = model(targets, bases, overlaps)
    loss = out["loss"]
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip if config.grad_clip > 0 else float("inf"))
    # The one host sync of a step: skipping a non-finite update needs the flag on the host.
    finite = bool(torch.isfinite(loss.detach()) & torch.isfinite(norm))
    if finite:
        if scaler is not None:
            scaler.step(optimizer)
        else:
            optimizer.step()
    if scaler is not None:
        scaler.update()
    stats = {k: v.detach() for k, v in out.items()}
    stats["finite"] = finite
    return stats


def run_pretraining(config) -> str:
    """Run (or continue) VoCo pre-training; returns the output folder."""
    # ============ process, data sources, encoder ============
    ctx = init_context(config.device)
    sources = open_datasets(config.datasets, config.plans, config.configuration)
    first = sources[0]
    folder = config.output_folder or voco_output_folder(first.name, config.plans, config.configuration)
    log = outputs.RunLog(folder, enabled=ctx.is_main)
    bundle = build_encoder(config.encoder, first.plans_manager, first.configuration_manager, first.num_input_channels,
                           config.swin_feature_size, config.gradient_checkpointing)
    layout = resolve_layout(config, first.configuration_manager, bundle.divisor, lambda *a: None)
    batch_size = resolve_batch_size(config, first.configuration_manager, layout)
    resume_from = outputs.prepare_output_folder(folder, config)  # raises before anything is written
    if ctx.is_main:
        os.makedirs(folder, exist_ok=True)
    ctx.barrier()
    log = outputs.RunLog(folder, enabled=ctx.is_main)
    resolve_layout(config, first.configuration_manager, bundle.divisor, log)

    # ============ model, loss, optimiser ============
    torch.manual_seed(config.seed + ctx.rank)
    preset = config.preset
    loss = VoCoLoss(preset, config.pos_weight, config.neg_weight, config.reg_weight, config.inter_weight)
    dropout = config.embedding_dropout if config.embedding_dropout is not None else (0.2 if preset == "v2" else 0.0)
    model = VoCoModel(bundle, preset, loss, config.head_dim, dropout, config.row_dropout).to(ctx.device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    amp_dtype = autocast_dtype(config.precision, ctx.device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    step = outputs.load_state(resume_from, model, optimizer, scaler, config) if resume_from else 0
    history = log.truncate_metrics(step) if resume_from else []
    train_model = model
    if ctx.distributed:
        model.projector = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.projector)
        ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if config.compile:
        model.encoder = torch.compile(model.encoder)

    # ============ data ============
    warmup = config.warmup_steps if config.warmup_steps is not None else min(5000, config.num_steps // 20)
    shift_prob = config.shift_prob if config.shift_prob is not None else (0.5 if preset == "v2" else 0.1)
    augment = AugmentConfig(config.flip_prob, config.rot90_prob, shift_prob, 0.1, config.scale_prob, 0.1)
    coarse = int(np.argmax(first.configuration_manager.spacing))
    inplane = tuple(a for a in range(3) if a != (coarse if len(set(first.configuration_manager.spacing)) > 1 else 0))
    on_device_aug = ctx.device.type == "cuda"
    sampler = WindowSampler(sources, layout, config.foreground_probability)
    num_workers = config.num_workers if config.num_workers is not None else max(0, min(4, (os.cpu_count() or 1) - 1))
    stream = VoCoStream(sampler, config.seed, ctx.rank, step, None if on_device_aug else augment, inplane)
    loader = make_loader(stream, batch_size, num_workers, pin_memory=ctx.device.type == "cuda")
    generator = torch.Generator().manual_seed(config.seed * 1000003 + ctx.rank * 7919 + step)

    if ctx.is_main:
        outputs.write_config(folder, config, {"batch_size": batch_size, "crop_size": layout.crop_size,
                                              "grid": layout.grid, "warmup_steps": warmup, "world_size": ctx.world_size})
    log(f"VoCo pre-training: preset {preset}, encoder {config.encoder} ({bundle.embedding_dim}-d embedding), "
        f"datasets {', '.join(s.name for s in sources)} ({len(sampler)} cases), plans {config.plans}, "
        f"configuration {config.configuration}")
    log(f"VoCo: crop {layout.crop_size}, grid {layout.grid} ({layout.num_bases} base + {layout.num_targets} target "
        f"crops, window {layout.window}), {batch_size} volumes/step/process x {ctx.world_size} processes, "
        f"device {ctx.device}, precision {amp_dtype or 'fp32'}, {num_workers} data workers, output {folder}")
    if resume_from:
        log(f"VoCo: continuing from {resume_from} at step {step}")

    # ============ training loop ============
    meta_fn = lambda s: outputs.encoder_meta(bundle.meta, sources, config, layout, s)  # noqa: E731
    stop = StopRequest().install()
    timings = {"data": 0.0, "step": 0.0}
    window, bad_streak = [], 0
    bar = tqdm(total=config.num_steps, initial=step, disable=not ctx.is_main, desc="VoCo", dynamic_ncols=True,
               mininterval=1.0, file=sys.stdout)
    data_iter = iter(loader)
    try:
        while step < config.num_steps and stop.signal is None:
            t0 = time.perf_counter()
            batch = next(data_iter)
            t1 = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, config.lr, warmup, config.num_steps, config.min_lr)
            stats = train_step(train_model, batch, optimizer, scaler, ctx, amp_dtype, config,
                               augment if on_device_aug else None, generator, inplane)
            if not stats["finite"]:
                bad_streak += 1
                log(f"VoCo: warning: non-finite loss at step {step} (input or model produced NaN/Inf); step skipped "
                    f"({bad_streak}/{config.max_nonfinite} in a row)")
                if bad_streak >= config.max_nonfinite:
                    raise RuntimeError(f"{bad_streak} consecutive non-finite losses at step {step}; check the data "
                                       f"for NaN/Inf voxels or lower --lr (last good state: {outputs.LATEST})")
                continue
            bad_streak = 0
            model.update_teacher(momentum_at(step, config.num_steps, config.ema_momentum, config.ema_momentum_final))
            step += 1
            timings["data"] += t1 - t0
            timings["step"] += time.perf_counter() - t1
            window.append({k: stats[k] for k in LOGGED if k in stats})
            bar.update(1)
            if step % config.log_every == 0 or step == config.num_steps:
                row = {"step": step, "lr": optimizer.param_groups[0]["lr"],
                       **{k: float(torch.stack([w[k] for w in window]).mean()) for k in window[0]},
                       "data_wait_share": timings["data"] / max(timings["data"] + timings["step"], 1e-9)}
                window = []
                history.append(row)
                log.metrics(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", pos=f"{row['pos']:.3f}", reg=f"{row['reg']:.3f}")
                log(f"step {step}: " + ", ".join(f"{k} {row[k]:.4g}" for k in ("loss", "pos", "neg", "reg", "inter", "lr")
                                                 if k in row), also_print=False)
            if step % config.save_every == 0 and step < config.num_steps:
                if ctx.is_main:
                    outputs.save_state(os.path.join(folder, outputs.LATEST), step, model, optimizer, scaler, config,
                                       meta_fn(step))
                    plot_progress(history, os.path.join(folder, "progress.png"))
        bar.close()
        # ============ stop, or export ============
        if stop.signal is not None:
            if ctx.is_main:
                outputs.save_state(os.path.join(folder, outputs.LATEST), step, model, optimizer, scaler, config,
                                   meta_fn(step))
            argv = [a for a in sys.argv[1:]] if sys.argv else []
            hint = "voco_pretrain " + " ".join(argv + ([] if "--c" in argv else ["--c"]))
            log(f"VoCo: interrupted by signal {stop.signal} at step {step}; state saved to "
                f"{os.path.join(folder, outputs.LATEST)}. Resume with: {hint}")
            raise Interrupted(stop.exit_code)
        if ctx.is_main:
            meta = meta_fn(step)
            outputs.save_state(os.path.join(folder, outputs.FINAL), step, model, optimizer, scaler, config, meta)
            outputs.save_state(os.path.join(folder, outputs.LATEST), step, model, optimizer, scaler, config, meta)
            written = outputs.export_final(folder, bundle, meta, first)
            plot_progress(history, os.path.join(folder, "progress.png"))
            total = timings["data"] + timings["step"]
            log(f"VoCo: finished {step} steps; data wait {100 * timings['data'] / max(total, 1e-9):.1f}% of the "
                f"loop time; wrote {', '.join(os.path.basename(w) for w in written)} to {folder}")
        return folder
    finally:
        stop.restore()
        ctx.barrier()
        ctx.close()
