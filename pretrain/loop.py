"""``run_pretraining(config)``: the VoCo pre-training loop, read top to bottom.

One step: a batch of volumes (each ``K`` base + ``S`` target crops with overlap targets) ->
:class:`~nnunet_voco.voco.model.VoCoModel` -> losses -> backward -> gradient clipping -> AdamW with
warm-up + cosine learning rate -> EMA teacher update. Runs on CPU, one GPU, or many under torchrun
(DDP; teachers take no gradients, so no ``find_unused_parameters``).
"""
from __future__ import annotations

import math
import os
import shlex
import signal
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from nnunet_voco.voco import geometry
from nnunet_voco.voco.augment import AugmentConfig, augment_crops
from nnunet_voco.encoders import build_encoder
from nnunet_voco.nnunet.loader import VoCoStream, make_loader
from nnunet_voco.voco.loss import VoCoLoss
from nnunet_voco.voco.model import VoCoModel
from nnunet_voco.voco.monitor import HeldOutWindows, LearningGuard, evaluate, split_cases
from nnunet_voco.artifacts import run_folder
from nnunet_voco.nnunet import UserInputError, open_datasets
from nnunet_voco.voco.sampling import CropLayout, WindowSampler
from nnunet_voco.pretrain import outputs
from nnunet_voco.pretrain.distributed import StopRequest, autocast, autocast_dtype, init_context

LOGGED = ("loss", "pos", "neg", "reg", "inter", "logit_overlap_mean", "logit_zero_mean",
          "base_similarity_mean", "embedding_std")


class Interrupted(Exception):
    """Raised after the state was saved on SIGTERM/SIGINT; ``exit_code`` is 128 + signal number."""

    def __init__(self, exit_code: int):
        super().__init__(f"interrupted (exit code {exit_code})")
        self.exit_code = exit_code


class TrainingAborted(RuntimeError):
    """Training cannot go on (``--max_nonfinite`` non-finite losses in a row); saved states are kept."""


def account_nonfinite(flags: list[bool], step: int, streak: int, config, log, latest: str) -> int:
    """Warn about the skipped (non-finite) updates among the steps ending at ``step``; returns the
    current run of consecutive non-finite steps.

    Raises:
        TrainingAborted: ``config.max_nonfinite`` consecutive steps were non-finite.
    """
    bad = [step - len(flags) + 1 + i for i, ok in enumerate(flags) if not ok]
    worst = 0
    for ok in flags:
        streak = 0 if ok else streak + 1
        worst = max(worst, streak)
    if bad:
        log(f"VoCo: warning: non-finite loss at step {', '.join(map(str, bad))} (input or model produced NaN/Inf); "
            f"update skipped ({worst}/{config.max_nonfinite} in a row)")
    if worst >= config.max_nonfinite:
        saved = f"last good state: {latest}" if os.path.isfile(latest) else "no state was saved"
        raise TrainingAborted(f"{worst} consecutive non-finite losses up to step {bad[-1]}; check the data for NaN/Inf "
                              f"voxels or lower --lr ({saved})")
    return streak


def case_shapes(sources, limit: int = 256) -> list[tuple[str, tuple[int, int, int]]]:
    """Spatial shapes of the cases (an evenly spaced subset of ``limit`` for large pools).

    Reads only array headers through nnU-Net's dataset classes (blosc2/numpy memory maps).
    """
    cases = [(s, ident) for s in sources for ident in s.identifiers]
    checked = [cases[i] for i in np.unique(np.linspace(0, len(cases) - 1, min(limit, len(cases))).astype(int))]
    datasets = {id(s): s.open() for s in sources}
    return [(f"{s.name}/{ident}", tuple(int(v) for v in datasets[id(s)].load_case(ident)[0].shape[1:]))
            for s, ident in checked]


def warn_small_cases(shapes, crop_size, log) -> None:
    """Log once per run how many cases are smaller than a crop on some axis (they are padded)."""
    small = [(name, shape) for name, shape in shapes if any(a < c for a, c in zip(shape, crop_size))]
    if small:
        log(f"VoCo: warning: {len(small)} of {len(shapes)} checked cases are smaller than the crop {tuple(crop_size)} "
            f"on some axis and get padded with their minimum (first: {small[0][0]} {small[0][1]}); pass a smaller "
            f"--crop_size if that is much of the data")


def resolve_layout(config, configuration_manager, divisor, median_shape) -> tuple[CropLayout, str]:
    """Crop size and grid (fitted to the median case unless given) and the number of targets.

    Returns:
        The layout and a one-line account of the rule that produced it (printed at start).
    """
    patch = tuple(configuration_manager.patch_size)
    if config.crop_size is None:
        crop, grid, rule = geometry.fitted_layout(median_shape, patch, configuration_manager.spacing, divisor,
                                                  config.grid)
    else:
        crop = geometry.validate_crop_size(config.crop_size, divisor)
        grid = tuple(config.grid or geometry.default_grid(configuration_manager.spacing, 3, median_shape))
        rule = f"crop size {crop} given (--crop_size), grid {grid} {'given' if config.grid else '(3x3 in-plane)'}"
    geometry.window_size(crop, grid)  # validates the grid
    if config.num_targets < 1:
        raise UserInputError(f"--num_targets {config.num_targets} must be >= 1")
    return CropLayout(tuple(crop), tuple(grid), config.num_targets), rule


def held_out_count(config, num_cases: int, log) -> int:
    """Cases to hold out for the monitor: ``--val_cases``, but never the last training case."""
    if config.val_cases < 0 or config.val_every < 1 or config.val_windows < 1:
        raise UserInputError(f"--val_cases {config.val_cases}, --val_every {config.val_every} and --val_windows "
                             f"{config.val_windows} must be >= 0, >= 1 and >= 1")
    n = min(config.val_cases, num_cases - 1)
    if n < config.val_cases:
        log(f"VoCo: warning: only {num_cases} case(s): holding out {n} instead of --val_cases {config.val_cases}"
            + ("; the held-out position monitor is off" if n == 0 else ""))
    return max(n, 0)


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
    """Forward, backward, clip and optimiser step; returns detached losses, with no host sync.

    A non-finite loss or gradient norm skips the update on the device: the loss is folded into the
    gradients (a NaN backward seed), so the clipped norm (identical on every DDP rank) decides, and
    the optimiser is told through ``found_inf`` as GradScaler does (fused AdamW then leaves weights,
    moments and step count untouched). ``stats["finite"]`` is a 0-d bool tensor on the device: read
    it only every few steps. Optimisers without ``found_inf`` support fall back to one sync.
    """
    targets = batch["targets"].to(ctx.device, non_blocking=True)
    bases = batch["bases"].to(ctx.device, non_blocking=True)
    overlaps = batch["overlaps"].to(ctx.device, non_blocking=True)
    if augment is not None:  # on the accelerator: one gather/scatter per spatial transform
        targets = augment_crops(targets.flatten(0, 1), augment, generator, inplane).view_as(targets)
        bases = augment_crops(bases.flatten(0, 1), augment, generator, inplane).view_as(bases)
    if config.channels_last:  # (B, n, C, X, Y, Z): each crop channels-last (the format needs rank 5)
        targets, bases = (t.flatten(0, 1).contiguous(memory_format=torch.channels_last_3d).unflatten(0, t.shape[:2])
                          for t in (targets, bases))
    optimizer.zero_grad(set_to_none=True)
    with autocast(ctx.device, amp_dtype):
        out = model(targets, bases, overlaps)
    loss = out["loss"] * torch.where(torch.isfinite(out["loss"].detach()), 1.0, float("nan"))
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip if config.grad_clip > 0 else float("inf"))
    finite = torch.isfinite(norm)
    if scaler is not None:
        scaler.step(optimizer)  # skips on its own: the unscaled gradients hold the NaN
        scaler.update()
    elif getattr(optimizer, "_step_supports_amp_scaling", False) and all(g.get("fused") for g in optimizer.param_groups):
        optimizer.found_inf = (~finite).float()
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif bool(finite):  # host sync: only for optimisers that cannot skip on the device
        optimizer.step()
    stats = {k: v.detach() for k, v in out.items()}
    stats["finite"] = finite
    return stats


def run_pretraining(config) -> str:
    """Run (or continue) VoCo pre-training; returns the output folder."""
    # ============ process, data sources, encoder ============
    ctx = init_context(config.device)
    sources = open_datasets(config.datasets, config.plans, config.configuration)
    first = sources[0]
    folder = config.output_folder or run_folder(first.name, config.plans, config.configuration)
    torch.manual_seed(config.seed + ctx.rank)  # the encoder's initialisation too: seeds give matched arms
    bundle = build_encoder(config.encoder, first.plans_manager, first.configuration_manager, first.num_input_channels,
                           config.swin_feature_size, config.gradient_checkpointing)
    shapes = case_shapes(sources)
    median_shape = tuple(int(v) for v in np.median([shape for _, shape in shapes], axis=0))
    layout, geometry_rule = resolve_layout(config, first.configuration_manager, bundle.divisor, median_shape)
    batch_size = resolve_batch_size(config, first.configuration_manager, layout)
    # one run per folder (exit 2 otherwise); raises before anything but the lock file is written
    resume_from, folder_lock = outputs.claim_output_folder(folder, config, ctx)
    log = outputs.RunLog(folder, enabled=ctx.is_main)
    if folder_lock is not None and folder_lock.stale:
        log(f"VoCo: warning: {folder_lock.stale}")

    # ============ model, loss, optimiser ============
    torch.manual_seed(config.seed + ctx.rank)
    preset = config.preset
    loss = VoCoLoss(preset, config.pos_weight, config.neg_weight, config.reg_weight, config.inter_weight)
    dropout = config.embedding_dropout if config.embedding_dropout is not None else (0.2 if preset == "v2" else 0.0)
    model = VoCoModel(bundle, preset, loss, config.head_dim, dropout, config.row_dropout).to(ctx.device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    if ctx.distributed and ctx.device.type == "cuda":  # before the optimizer sees the parameters;
        # SyncBatchNorm needs GPU tensors (DDP refuses it on CPU), so gloo ranks keep per-rank statistics
        model.projector = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.projector)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay,
                                  fused=ctx.device.type in ("cpu", "cuda"))  # found_inf: skips without a host sync
    amp_dtype = autocast_dtype(config.precision, ctx.device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    step, trained = outputs.load_state(resume_from, model, optimizer, scaler, config) if resume_from else (0, None)
    if resume_from and ctx.distributed:  # the state holds rank 0's RNG: give every rank its own stream again
        torch.manual_seed(int(np.random.SeedSequence([config.seed, ctx.rank, step]).generate_state(1)[0]))
    history = log.truncate_metrics(step if step else -1)  # also drops rows of a run that died before its first checkpoint
    train_model = model
    if ctx.distributed:
        ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if config.compile:
        model.encoder = torch.compile(model.encoder)

    # ============ data ============
    warmup = config.warmup_steps if config.warmup_steps is not None else min(5000, config.num_steps // 20)
    config, schedule = outputs.resume_schedule(config, trained, resume_from, step, warmup, log)  # --c: kept or redefined
    shift_prob = config.shift_prob if config.shift_prob is not None else (0.5 if preset == "v2" else 0.1)
    augment = AugmentConfig(config.flip_prob, config.rot90_prob, shift_prob, 0.1, config.scale_prob, 0.1)
    split = tuple(a for a in range(3) if layout.grid[a] > 1)
    whole = geometry.unsplit_axis(first.configuration_manager.spacing, median_shape)
    inplane = split if len(split) == 2 else tuple(a for a in range(3) if a != whole)  # rot90 plane
    on_device_aug = ctx.device.type == "cuda"
    all_cases = [(i, ident) for i, src in enumerate(sources) for ident in src.identifiers]
    train_cases, val_cases = split_cases(all_cases, [src.name for src in sources], held_out_count(config, len(all_cases),
                                                                                                     log))
    sampler = WindowSampler(sources, layout, config.foreground_probability, train_cases)
    monitor = None
    if val_cases and ctx.is_main:
        monitor = HeldOutWindows(WindowSampler(sources, layout, config.foreground_probability, val_cases),
                                 config.val_windows)
    guard = LearningGuard(log)
    for row in history:  # a resumed run keeps judging against its own step 0
        if "val_position_accuracy" in row:
            guard.history.append(row)
    num_workers = config.num_workers if config.num_workers is not None else max(0, min(4, (os.cpu_count() or 1) - 1))
    stream = VoCoStream(sampler, config.seed, ctx.rank, step, None if on_device_aug else augment, inplane)
    loader = make_loader(stream, batch_size, num_workers, pin_memory=ctx.device.type == "cuda")
    generator = torch.Generator().manual_seed(config.seed * 1000003 + ctx.rank * 7919 + step)

    if ctx.is_main:
        outputs.write_config(folder, config, {"batch_size": batch_size, "crop_size": layout.crop_size,
                                              "grid": layout.grid, "warmup_steps": warmup, "world_size": ctx.world_size,
                                              "median_case_shape": median_shape, "geometry_rule": geometry_rule,
                                              "val_cases": [f"{sources[i].name}/{ident}" for i, ident in val_cases]})
    log(f"VoCo pre-training: preset {preset}, encoder {config.encoder} ({bundle.embedding_dim}-d embedding), "
        f"datasets {', '.join(s.name for s in sources)} ({len(sampler)} training + {len(val_cases)} held-out cases), "
        f"plans {config.plans}, "
        f"configuration {config.configuration}")
    log(f"VoCo: geometry: {geometry_rule} (median of {len(shapes)} cases)")
    log(f"VoCo: crop {layout.crop_size}, grid {layout.grid} ({layout.num_bases} base + {layout.num_targets} target "
        f"crops, window {layout.window}), {batch_size} volumes/step/process x {ctx.world_size} processes, "
        f"device {ctx.device}, precision {amp_dtype or 'fp32'}, {num_workers} data workers, output {folder}")
    if resume_from:
        log(f"VoCo: continuing from {resume_from} at step {step}")
    elif config.continue_training:
        log(f"VoCo: warning: --c given but {folder} holds no checkpoint yet; starting a new run")
    if ctx.is_main:
        warn_small_cases(shapes, layout.crop_size, log)

    # ============ training loop ============
    meta_fn = lambda s: outputs.encoder_meta(bundle.meta, sources, config, layout, s)  # noqa: E731
    stop = StopRequest().install()
    timings = {"data": 0.0, "step": 0.0, "val": 0.0}
    window, bad_streak, padding_warned = [], 0, False

    def held_out_evaluation() -> None:
        row = {"step": step, **evaluate(model, monitor, batch_size, ctx.device)}
        timings["val"] += row["val_seconds"]
        history.append(row)
        log.metrics(row)
        log(f"step {step}: held-out position accuracy {row['val_position_accuracy']:.3f} (chance "
            f"{row['val_chance']:.3f}, best constant guess {row['val_prior']:.3f}), |logit - overlap| "
            f"{row['val_overlap_error']:.3f}, logit gap {row['val_logit_gap']:.3f}, argmax base overlaps the target "
            f"{row['val_overlap_hit']:.3f} (chance {row['val_overlap_hit_chance']:.3f})", also_print=False)
        guard(row)

    if monitor is not None and step == 0:
        held_out_evaluation()
    bar = tqdm(total=config.num_steps, initial=step, disable=not ctx.is_main, desc="VoCo", dynamic_ncols=True,
               mininterval=1.0, file=sys.stdout)
    data_iter = iter(loader)
    stopping, clean = False, False
    try:
        while step < config.num_steps and not stopping:
            t0 = time.perf_counter()
            try:
                batch = next(data_iter)
            except Exception:
                if stop.signal is None:
                    raise
                break  # Ctrl-C reaches the whole process group, data workers included
            t1 = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = schedule.lr_at(step)
            stats = train_step(train_model, batch, optimizer, scaler, ctx, amp_dtype, config,
                               augment if on_device_aug else None, generator, inplane)
            # a skipped (non-finite) update left the student as it was, so the EMA step is harmless
            model.update_teacher(schedule.momentum_at(step))
            step += 1
            timings["data"] += t1 - t0
            timings["step"] += time.perf_counter() - t1
            window.append({**{k: stats[k] for k in LOGGED + ("finite",) if k in stats},
                           "padding_share": batch["padding_share"].float().mean()})
            bar.update(1)
            (stopping,) = ctx.any_rank(stop.signal is not None)  # every rank stops after the same step
            if step % config.log_every == 0 or step == config.num_steps:  # host sync: read the flags and losses
                good = [w for w in window if bool(w["finite"])]
                bad_streak = account_nonfinite([bool(w["finite"]) for w in window], step, bad_streak, config, log,
                                               os.path.join(folder, outputs.LATEST))
                window = []
                if good:
                    row = {"step": step, "lr": optimizer.param_groups[0]["lr"],
                           **{k: float(torch.stack([w[k] for w in good]).mean()) for k in good[0] if k != "finite"},
                           "data_wait_share": timings["data"] / max(timings["data"] + timings["step"], 1e-9)}
                    history.append(row)
                    log.metrics(row)
                    if row["padding_share"] > 0.25 and not padding_warned:
                        padding_warned = True
                        log(f"VoCo: warning: {100 * row['padding_share']:.0f}% of the base-crop voxels up to step "
                            f"{step} are padding (window {layout.window}); the pretext degenerates on constant "
                            f"crops: pass a smaller --crop_size or --grid")
                    bar.set_postfix(loss=f"{row['loss']:.4f}", pos=f"{row['pos']:.3f}", reg=f"{row['reg']:.3f}")
                    log(f"step {step}: " + ", ".join(f"{k} {row[k]:.4g}" for k in ("loss", "pos", "neg", "reg", "inter",
                                                                                     "lr") if k in row), also_print=False)
            if monitor is not None and (step % config.val_every == 0 or step == config.num_steps):
                held_out_evaluation()
            if step % config.save_every == 0 and step < config.num_steps:
                if ctx.is_main:
                    outputs.save_state(os.path.join(folder, outputs.LATEST), step, model, optimizer, scaler, config,
                                       meta_fn(step))
                    outputs.write_progress(folder, history)
        bar.close()
        # ============ stop, or export ============
        if stopping or stop.signal is not None:
            if ctx.is_main:
                outputs.save_state(os.path.join(folder, outputs.LATEST), step, model, optimizer, scaler, config,
                                   meta_fn(step))
            argv = sys.argv[1:] if sys.argv else []
            hint = "voco_pretrain " + shlex.join(argv + ([] if "--c" in argv else ["--c"]))
            signum = stop.signal or signal.SIGTERM  # a rank stopped by another rank's signal
            log(f"VoCo: interrupted by signal {signum} at step {step}; state saved to "
                f"{os.path.join(folder, outputs.LATEST)}. Resume with: {hint}")
            clean = True
            raise Interrupted(128 + int(signum))
        if ctx.is_main:
            meta = meta_fn(step)
            outputs.save_state(os.path.join(folder, outputs.FINAL), step, model, optimizer, scaler, config, meta)
            outputs.save_state(os.path.join(folder, outputs.LATEST), step, model, optimizer, scaler, config, meta)
            written = outputs.export_final(folder, bundle, meta, first)
            outputs.write_progress(folder, history)
            total = timings["data"] + timings["step"] + timings["val"]
            log(f"VoCo: finished {step} steps; data wait {100 * timings['data'] / max(total, 1e-9):.1f}% and "
                f"held-out monitor {100 * timings['val'] / max(total, 1e-9):.1f}% of the loop time; wrote "
                f"{', '.join(os.path.basename(w) for w in written)} to {folder}")
            log(f"VoCo: {guard.summary()}")
        clean = True
        return folder
    finally:
        stop.restore()
        ctx.close(clean)  # after an error on this rank: no barrier, the others may never reach it
        if folder_lock is not None:
            folder_lock.release()
