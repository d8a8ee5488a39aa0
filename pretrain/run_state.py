"""Resumable state of a ``voco_pretrain`` run: ``checkpoint_latest.pth`` / ``checkpoint_final.pth``.

Writing and restoring the full state (model, optimiser, scaler, RNG, config; atomic, read with
``weights_only=True``), and fixing the learning-rate / momentum schedule when a run is continued
with ``--c`` (:mod:`nnunet_voco.pretrain.run_schedule`).

States hold the keys of the plain module (DESIGN.md section 9): DDP (``module.``) and
``torch.compile`` (``_orig_mod.``) wrap after loading and are unwrapped before saving
(:func:`plain_keys`), so a run trained with ``--compile`` resumes with or without it; states that
an earlier version wrote with ``encoder._orig_mod.*`` keys load too.
"""
from __future__ import annotations

import dataclasses
import os

import torch

from nnunet_voco.checkpoint import SCHEMA_VERSION, STATE_FORMAT, CheckpointError, check_schema, load_file, save_atomic
from nnunet_voco.checkpoint import to_plain
from nnunet_voco.nnunet import UserInputError
from nnunet_voco.pretrain.config import SCHEDULE_FIELDS
from nnunet_voco.pretrain.run_schedule import RunSchedule, default_warmup
from nnunet_voco.storage.disk_errors import DiskWriteError

LATEST, FINAL = "checkpoint_latest.pth", "checkpoint_final.pth"


def plain_keys(state: dict) -> dict:
    """``state`` with the key segments of wrappers removed: every ``_orig_mod`` (torch.compile) and a
    leading ``module`` (DDP). ``encoder._orig_mod.stem.w`` -> ``encoder.stem.w``."""
    def plain(key: str) -> str:
        parts = [p for p in key.split(".") if p != "_orig_mod"]
        return ".".join(parts[1:] if parts and parts[0] == "module" else parts)

    return {plain(k): v for k, v in state.items()}


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_state(path: str, step: int, model, optimizer, scaler, config, meta: dict) -> None:
    """Full resumable state (atomic).

    Raises:
        DiskWriteError: the file could not be written (disk full, quota, read-only); the previous
            file at ``path`` is intact and no temporary file is left.
    """
    try:
        save_atomic({
            "format": STATE_FORMAT, "schema_version": SCHEMA_VERSION, "step": int(step),
            "model": plain_keys(model.state_dict()), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": _rng_state(), "config": config.to_dict(), "identity": config.identity(), "meta": to_plain(meta),
        }, path)
    except DiskWriteError as e:
        other = os.path.join(os.path.dirname(path), FINAL if os.path.basename(path) == LATEST else LATEST)
        kept = ("the previous file is intact" if os.path.isfile(path) else f"{os.path.basename(other)} is intact"
                if os.path.isfile(other) else "no checkpoint was written yet")
        raise DiskWriteError(path, e.reason, f"{kept}; free space on that disk (or pass -o elsewhere) and resume "
                                             f"with --c", context=f" at step {step}") from None


def load_state(path: str, model, optimizer, scaler, config) -> tuple[int, dict]:
    """Restore a state written by :func:`save_state`.

    Returns:
        ``(step to continue from, the config dict the state was trained with)``; pass the latter to
        :func:`resume_schedule`.
    """
    state = load_file(path)
    check_schema(state, path, STATE_FORMAT)
    identity = state.get("identity") or {}
    for key, value in config.identity().items():
        if identity.get(key) != value:
            raise UserInputError(f"{path} was trained with {key}={identity.get(key)} but this run has "
                                 f"{key}={value}; resume with the original settings or start a new run with -o")
    trained = state.get("config") or {}
    for key in SCHEDULE_FIELDS:
        if key in trained and trained[key] != getattr(config, key):
            raise UserInputError(f"{path} was trained with --{key} {trained[key]} but this run has --{key} "
                                 f"{getattr(config, key)}; --c keeps the schedule of the run (only --num_steps may "
                                 f"change), so resume with --{key} {trained[key]} or start a new run with -o")
    try:
        model.load_state_dict(plain_keys(state["model"]))
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        return int(state["step"]), trained
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        first = " ".join(line.strip() for line in str(e).strip().splitlines())[:240] or type(e).__name__
        raise CheckpointError(f"{path} does not fit this model and optimiser ({type(e).__name__}: {first}); it was "
                              f"written for another architecture or by another nnunet-voco; start a new run with -o "
                              f"or --overwrite") from None


def resume_schedule(config, trained: dict | None, resume_from: str | None, step: int, warmup: int, log):
    """Fix the run's learning-rate / momentum schedule; returns ``(config with it, RunSchedule)``.

    A new run gets the plain schedule. ``--c`` keeps the schedule the checkpoint was trained with;
    another ``--num_steps`` redefines it from ``step`` on (no jump, see
    :mod:`nnunet_voco.pretrain.run_schedule`) and says so in the log.

    Raises:
        UserInputError: ``--num_steps`` is below the step the checkpoint reached.
    """
    schedule = RunSchedule(config.lr, config.min_lr, warmup, config.num_steps, config.ema_momentum,
                           config.ema_momentum_final)
    if trained:
        if trained.get("schedule"):
            previous = RunSchedule.from_dict(trained["schedule"])
        else:  # a checkpoint written before schedules were stored: rebuild it from its settings
            previous = dataclasses.replace(schedule, num_steps=trained["num_steps"], warmup=(
                trained.get("warmup_steps") if trained.get("warmup_steps") is not None
                else default_warmup(trained["num_steps"])))
        if config.num_steps < step:
            raise UserInputError(f"{resume_from} is at step {step}, beyond --num_steps {config.num_steps}; pass "
                                 f"--num_steps {previous.num_steps} (or any value >= {step}) to resume")
        schedule = previous
        if previous.num_steps != config.num_steps:
            schedule = previous.ended_at(step, config.num_steps)
            log(f"VoCo: {schedule.describe_change(previous, step)}")
    return dataclasses.replace(config, schedule=schedule.to_dict()), schedule
