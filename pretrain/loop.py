"""``run_pretraining(config)``: the VoCo pre-training loop, read top to bottom.

Everything a run is made of (encoder, layout, batch size, preset defaults, model, optimiser) is
resolved once, before the output folder is claimed, by
:func:`nnunet_voco.pretrain.run_setup.resolve_run`, which the step benchmarks call too.

One step: a batch of volumes (each ``K`` base + ``S`` target crops with overlap targets) ->
:class:`~nnunet_voco.voco.model.VoCoModel` -> losses -> backward -> gradient clipping -> AdamW with
warm-up + cosine learning rate -> EMA teacher update. Runs on CPU, one GPU, or many under torchrun
(DDP; teachers take no gradients, so no ``find_unused_parameters``).

Host synchronisation (DESIGN.md section 9): the loop reads device values only every ``--log_every``
steps, with one transfer, inside its step timer, so that ``data_wait_share`` (time blocked on
the data loader over the window's wall time) and ``seconds`` in each metric row cover the GPU work
too. Under DDP the ranks agree on a stop request every :data:`STOP_CHECK_EVERY` steps (at most),
at the same steps; the held-out monitor is evaluated by every rank, each its share of the windows.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from nnunet_voco.artifacts import run_folder
from nnunet_voco.nnunet import open_datasets
from nnunet_voco.pretrain import outputs, run_state
from nnunet_voco.pretrain.distributed import StopRequest, autocast, init_context
from nnunet_voco.pretrain.progress_plot import HEALTH_KEYS, LOSS_KEYS
from nnunet_voco.pretrain.run_setup import RunSetup, resolve_run, small_case_warning
from nnunet_voco.voco.augment import augment_crops
from nnunet_voco.voco.monitor import LearningGuard, evaluate

LOGGED = LOSS_KEYS + HEALTH_KEYS
STOP_CHECK_EVERY = 10  # steps between the ranks' agreement on a stop request (also every --log_every)


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


def train_step(model, batch, optimizer, scaler, ctx, amp_dtype, config, augment, generator, inplane) -> dict:
    """Forward, backward, clip and optimiser step; returns detached losses, with no host sync.

    A non-finite loss or gradient norm skips the update on the device: the loss is folded into the
    gradients (a NaN backward seed), so the clipped norm (identical on every DDP rank) decides, and
    the optimiser is told through ``found_inf`` as GradScaler does (fused AdamW then leaves weights,
    moments and step count untouched). ``stats["finite"]`` is a 0-d bool tensor on the device: read
    it only every few steps. Optimisers without ``found_inf`` support fall back to one sync.

    fp16 (``scaler``): a step whose loss is finite but whose gradients overflow is GradScaler's normal
    business (it skips the update and lowers the scale); it is reported as ``stats["overflow"]`` and
    not counted as non-finite. It counts only once the scale has fallen below 1, where the gradients
    overflow although they are scaled down.
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
    overflow = None
    if scaler is not None:
        loss_ok = torch.isfinite(out["loss"].detach())
        overflow = loss_ok & ~finite
        counted = loss_ok & (finite | (scaler._get_scale_async() >= 1.0))  # before update() lowers the scale
        scaler.step(optimizer)  # skips on its own: the unscaled gradients hold the NaN / Inf
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
    stats["finite"] = finite if overflow is None else counted
    if overflow is not None:
        stats["overflow"] = overflow
    return stats


@dataclasses.dataclass
class _LoopState:
    """What the loop carries from step to step (the host reads the device values every ``--log_every``)."""

    step: int
    history: list  # metric rows of this run (training and held-out)
    window: list = dataclasses.field(default_factory=list)  # per-step stats since the last log row
    bad_streak: int = 0  # consecutive non-finite steps
    padding_warned: bool = False
    stopping: bool = False
    timings: dict = dataclasses.field(default_factory=lambda: {"data": 0.0, "step": 0.0, "val": 0.0})
    window_timings: dict = dataclasses.field(default_factory=lambda: {"data": 0.0, "step": 0.0})

    def add_time(self, data: float, step: float) -> None:
        for t in (self.timings, self.window_timings):
            t["data"], t["step"] = t["data"] + data, t["step"] + step


def _log_start(setup: RunSetup, config, folder: str, resume_from, step: int, log) -> None:
    for line in setup.warnings + tuple(setup.describe(folder)):
        log(line)
    if resume_from:
        log(f"VoCo: continuing from {resume_from} at step {step}")
    elif config.continue_training:
        log(f"VoCo: warning: --c given but {folder} holds no checkpoint yet; starting a new run")
    small = small_case_warning(setup.shapes, setup.layout.crop_size) if setup.ctx.is_main else None
    if small:
        log(small)


def _held_out_evaluation(setup: RunSetup, monitor, state: _LoopState, guard: LearningGuard, log) -> None:
    """Every rank evaluates its share of the monitor's windows (same autocast as training, eager
    encoder) and gets the same row; rank 0 logs it."""
    ctx = setup.ctx
    with autocast(ctx.device, setup.amp_dtype):
        metrics = evaluate(setup.model, monitor, setup.batch_size, ctx.device, ctx.rank, ctx.world_size,
                           ctx.all_gather)
    row = {"step": state.step, **metrics}
    state.timings["val"] += row["val_seconds"]
    state.history.append(row)
    log.metrics(row)
    log(f"step {state.step}: held-out position accuracy {row['val_position_accuracy']:.3f} (chance "
        f"{row['val_chance']:.3f}, best constant guess {row['val_prior']:.3f}), |logit - overlap| "
        f"{row['val_overlap_error']:.3f}, logit gap {row['val_logit_gap']:.3f}, argmax base overlaps the target "
        f"{row['val_overlap_hit']:.3f} (chance {row['val_overlap_hit_chance']:.3f})"
        + (f"; training windows: position accuracy {row['train_position_accuracy']:.3f}, argmax base overlaps "
           f"{row['train_overlap_hit']:.3f}" if "train_position_accuracy" in row else ""), also_print=False)
    guard(row)


def _read_window(window: list[dict]) -> tuple[list[str], list[list[float]]]:
    """The window's per-step device values on the host, in one transfer (the loop's only sync)."""
    keys = [k for k, v in window[0].items() if isinstance(v, torch.Tensor)]
    device = torch.stack([torch.stack([w[k].float() for k in keys]) for w in window]).cpu().tolist()
    host = [k for k in window[0] if k not in keys]  # already on the host
    return keys + host, [d + [w[k] for k in host] for d, w in zip(device, window)]


def _log_window(setup: RunSetup, config, state: _LoopState, values, bar, folder: str, log) -> None:
    """Every ``--log_every`` steps, after :func:`_read_window`: account non-finite steps, write one metric row."""
    (keys, rows), step = values, state.step
    steps = [dict(zip(keys, r)) for r in rows]
    flags = [bool(w["finite"]) for w in steps]
    good = [w for w, ok in zip(steps, flags) if ok]
    state.bad_streak = account_nonfinite(flags, step, state.bad_streak, config, log,
                                         os.path.join(folder, run_state.LATEST))
    state.window = []
    t, state.window_timings = state.window_timings, {"data": 0.0, "step": 0.0}
    if not good:
        return
    row = {"step": step, "lr": setup.optimizer.param_groups[0]["lr"],
           **{k: float(np.mean([w[k] for w in good])) for k in keys if k not in ("finite", "overflow")},
           "seconds": t["data"] + t["step"], "data_wait_share": t["data"] / max(t["data"] + t["step"], 1e-9)}
    if "overflow" in keys:  # fp16: steps GradScaler skipped, and its scale now
        row.update(scaler_skipped=int(sum(w["overflow"] for w in steps)), loss_scale=setup.scaler.get_scale())
    if setup.ctx.device.type == "cuda":
        row["peak_gpu_gib"] = torch.cuda.max_memory_allocated(setup.ctx.device) / 2**30
    state.history.append(row)
    log.metrics(row)
    if row["padding_share"] > 0.25 and not state.padding_warned:
        state.padding_warned = True
        log(f"VoCo: warning: {100 * row['padding_share']:.0f}% of the base-crop voxels up to step {step} are padding "
            f"(window {setup.layout.window}); the pretext degenerates on constant crops: pass a smaller --crop_size "
            f"or --grid")
    bar.set_postfix(loss=f"{row['loss']:.4f}", pos_loss=f"{row['pos']:.3f}", reg_loss=f"{row['reg']:.3f}")
    log(f"step {step}: " + ", ".join(f"{k} {row[k]:.4g}" for k in ("loss", "pos", "neg", "reg", "inter", "lr")
                                     if k in row), also_print=False)


def _train(setup: RunSetup, config, schedule, train_model, loader, generator, monitor, guard, stop, state: _LoopState,
           folder: str, log) -> None:
    """Steps until ``--num_steps`` or a stop request; ``state`` holds where it ended."""
    ctx, model, optimizer = setup.ctx, setup.model, setup.optimizer
    bar = tqdm(total=config.num_steps, initial=state.step, disable=not ctx.is_main, desc="VoCo", dynamic_ncols=True,
               mininterval=1.0, file=sys.stdout)
    stop_every = min(config.log_every, STOP_CHECK_EVERY) if ctx.distributed else 1
    data_iter = iter(loader)
    while state.step < config.num_steps and not state.stopping:
        t0 = time.perf_counter()
        try:
            batch = next(data_iter)
        except Exception:
            if stop.signal is None:
                raise
            break  # Ctrl-C reaches the whole process group, data workers included
        t1 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr_at(state.step)
        stats = train_step(train_model, batch, optimizer, setup.scaler, ctx, setup.amp_dtype, config,
                           setup.device_augment, generator, setup.inplane)
        # a skipped (non-finite) update left the student as it was, so the EMA step is harmless
        model.update_teacher(schedule.momentum_at(state.step))
        state.step = step = state.step + 1
        state.window.append({**{k: stats[k] for k in LOGGED + ("finite", "overflow") if k in stats},
                             "padding_share": float(batch["padding_share"].float().mean())})  # a CPU tensor
        if step % stop_every == 0 or step == config.num_steps:  # the same steps on every rank
            (state.stopping,) = ctx.any_rank(stop.signal is not None)
        log_now = step % config.log_every == 0 or step == config.num_steps or state.stopping
        values = _read_window(state.window) if log_now else None  # the host sync, inside the step timer
        state.add_time(t1 - t0, time.perf_counter() - t1)
        bar.update(1)
        if log_now:
            _log_window(setup, config, state, values, bar, folder, log)
        if monitor is not None and (step % config.val_every == 0 or step == config.num_steps):
            _held_out_evaluation(setup, monitor, state, guard, log)
        if step % config.save_every == 0 and step < config.num_steps and ctx.is_main:
            _save(setup, config, step, os.path.join(folder, run_state.LATEST))
            outputs.write_progress(folder, state.history)
    bar.close()


def _save(setup: RunSetup, config, step: int, path: str, meta: dict | None = None) -> None:
    meta = meta if meta is not None else outputs.encoder_meta(setup.bundle.meta, setup.sources, config, setup.layout,
                                                              step)
    run_state.save_state(path, step, setup.model, setup.optimizer, setup.scaler, config, meta)


def _save_interrupted(setup: RunSetup, config, step: int, folder: str, stop: StopRequest, log) -> None:
    latest = os.path.join(folder, run_state.LATEST)
    if setup.ctx.is_main:
        _save(setup, config, step, latest)
    argv = sys.argv[1:] if sys.argv else []
    hint = "voco_pretrain " + shlex.join(argv + ([] if "--c" in argv else ["--c"]))
    log(f"VoCo: interrupted by signal {stop.signum} at step {step}; state saved to {latest}. Resume with: {hint}")


def _export(setup: RunSetup, config, state: _LoopState, guard: LearningGuard, folder: str, log) -> None:
    """Final and latest states, the encoder files, the progress plot and the closing lines (rank 0)."""
    meta = outputs.encoder_meta(setup.bundle.meta, setup.sources, config, setup.layout, state.step)
    _save(setup, config, state.step, os.path.join(folder, run_state.FINAL), meta)
    _save(setup, config, state.step, os.path.join(folder, run_state.LATEST), meta)
    written = outputs.export_final(folder, setup.bundle, meta, setup.sources[0])
    outputs.write_progress(folder, state.history)
    t = state.timings
    total = t["data"] + t["step"] + t["val"]
    peak = (f"; peak GPU memory {torch.cuda.max_memory_allocated(setup.ctx.device) / 2**30:.2f} GiB"
            if setup.ctx.device.type == "cuda" else "")
    log(f"VoCo: finished {state.step} steps; data wait {100 * t['data'] / max(total, 1e-9):.1f}% and held-out "
        f"monitor {100 * t['val'] / max(total, 1e-9):.1f}% of the loop time{peak}; wrote "
        f"{', '.join(os.path.basename(w) for w in written)} to {folder}")
    log(f"VoCo: {guard.summary()}")


def run_pretraining(config) -> str:
    """Run (or continue) VoCo pre-training; returns the output folder."""
    # ============ process, data sources, the resolved run ============
    ctx = init_context(config.device)
    sources = open_datasets(config.datasets, config.plans, config.configuration)
    setup = resolve_run(config, sources, ctx)
    folder = config.output_folder or run_folder(sources[0].name, config.plans, config.configuration)
    # one run per folder (exit 2 otherwise); raises before anything but the lock file is written
    resume_from, folder_lock = outputs.claim_output_folder(folder, config, ctx)
    log = outputs.RunLog(folder, enabled=ctx.is_main)
    if folder_lock is not None and folder_lock.stale:
        log(f"VoCo: warning: {folder_lock.stale}")

    # ============ resume ============
    step, trained = (run_state.load_state(resume_from, setup.model, setup.optimizer, setup.scaler, config)
                     if resume_from else (0, None))
    if resume_from and ctx.distributed:  # the state holds rank 0's RNG: give every rank its own stream again
        torch.manual_seed(int(np.random.SeedSequence([config.seed, ctx.rank, step]).generate_state(1)[0]))
    history = log.truncate_metrics(step if step else -1)  # also drops rows of a run that died before a checkpoint
    train_model = setup.training_model()
    config, schedule = run_state.resume_schedule(config, trained, resume_from, step, setup.warmup_steps, log)

    # ============ data, monitor, start lines ============
    monitor, guard = setup.held_out_windows(), LearningGuard(log)
    guard.history.extend(row for row in history if "val_position_accuracy" in row)  # judged against its step 0
    loader, generator = setup.make_loader(step), setup.augment_generator(step)
    if ctx.is_main:
        outputs.write_config(folder, config, setup.resolved())
    _log_start(setup, config, folder, resume_from, step, log)

    # ============ training loop ============
    stop, state, clean = StopRequest().install(), _LoopState(step=step, history=history), False
    try:
        if monitor is not None and step == 0:
            _held_out_evaluation(setup, monitor, state, guard, log)
        _train(setup, config, schedule, train_model, loader, generator, monitor, guard, stop, state, folder, log)
        # ============ stop, or export ============
        if state.stopping or stop.signal is not None:
            _save_interrupted(setup, config, state.step, folder, stop, log)
            clean = True
            raise Interrupted(stop.exit_code)  # SIGTERM for a rank stopped by another rank's signal
        if ctx.is_main:
            _export(setup, config, state, guard, folder, log)
        clean = True
        return folder
    finally:
        stop.restore()
        ctx.close(clean)  # after an error on this rank: no barrier, the others may never reach it
        if folder_lock is not None:
            folder_lock.release()
