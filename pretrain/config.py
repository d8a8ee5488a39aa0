"""Configuration of one ``voco_pretrain`` run (one field per flag), checked whole when it is made.

Every numeric flag is checked here, once, in :meth:`PretrainConfig.__post_init__`, before anything is
imported, opened or written: a value that would make the run silent nonsense (``--num_steps -5``
exporting an untrained encoder, ``--lr 0``, a probability of 2, ``--grid 1 1 1`` with a single base
crop...) raises :class:`~nnunet_voco.errors.UserInputError` naming every bad flag, its value and the
allowed range, and the command exits with code 2. Checks that need the data or the encoder (the crop
against the encoder's stride and deepest map, see :mod:`nnunet_voco.voco.geometry`) come later, still
before the output folder is made.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

from nnunet_voco.errors import UserInputError
from nnunet_voco.voco.presets import DEFAULT_PRESET

# field -> smallest allowed value (None, where the field allows it, means "derive it")
_INT_MINIMUM = {"num_steps": 1, "warmup_steps": 0, "batch_size": 1, "num_targets": 1, "head_dim": 1,
                "swin_feature_size": 12, "num_workers": 0, "val_cases": 0, "val_every": 1, "val_windows": 1,
                "seed": 0, "save_every": 1, "log_every": 1, "max_nonfinite": 1}
_PROBABILITIES = ("flip_prob", "rot90_prob", "shift_prob", "scale_prob", "foreground_probability")
_NON_NEGATIVE = ("min_lr", "weight_decay", "grad_clip", "pos_weight", "neg_weight", "reg_weight", "inter_weight")

# Fields that define what is being trained: a run can only be continued (--c) with the same values.
IDENTITY_FIELDS = (
    "datasets", "plans", "configuration", "preset", "encoder", "swin_feature_size", "crop_size", "grid",
    "num_targets", "head_dim",
)
# Fields that shape the learning-rate / momentum schedule: --c refuses other values (--num_steps may
# change: that redefines the schedule from the resume step, see nnunet_voco.pretrain.run_schedule).
SCHEDULE_FIELDS = ("lr", "min_lr", "warmup_steps", "ema_momentum", "ema_momentum_final")


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """All settings of a VoCo pre-training run; ``None`` means "derive from the plans"."""

    datasets: tuple[str, ...]  # dataset ids or names; the first one's plans define encoder and geometry
    plans: str = "nnUNetPlans"  # plans identifier (nnUNetResEncUNetMPlans, ...)
    configuration: str = "3d_fullres"  # nnU-Net configuration whose patch size, spacing and network are used
    preset: str = DEFAULT_PRESET  # v2 (TPAMI code) or v1 (CVPR repo code); defaults in nnunet_voco.voco.presets
    encoder: str = "plans"  # "plans" (the planned CNN) or swin_b / swin_l / swin_h
    swin_feature_size: Optional[int] = None  # override of the Swin size (multiple of 12), for tests
    gradient_checkpointing: bool = False  # Swin only: trade compute for memory
    num_steps: int = 100_000  # optimiser steps
    warmup_steps: Optional[int] = None  # default min(5000, num_steps // 20) (run_schedule.default_warmup)
    batch_size: Optional[int] = None  # volumes per step per process; default from the plans' batch size
    num_targets: int = 2  # target crops per volume
    grid: Optional[tuple[int, int, int]] = None  # base grid; default 3x3 in-plane (2x2 if 3x3 does not fit)
    crop_size: Optional[tuple[int, int, int]] = None  # default: fitted so the window fits the median case
    lr: float = 1e-4  # peak AdamW learning rate (official: 1e-4)
    min_lr: float = 1e-6  # end of the cosine decay
    weight_decay: float = 0.01  # AdamW weight decay (official: torch default 0.01)
    grad_clip: float = 3.0  # max gradient norm, 0 disables
    ema_momentum: float = 0.9  # teacher momentum (official: 0.9 fixed)
    ema_momentum_final: Optional[float] = None  # cosine ramp of the momentum to this value
    head_dim: Optional[int] = None  # projector width; default the preset's (1024 v2 / 2048 v1)
    embedding_dropout: Optional[float] = None  # default the preset's (0.2 v2, none in v1)
    row_dropout: bool = False  # reproduce the official v2 whole-embedding dropout
    pos_weight: float = 1.0
    neg_weight: float = 1.0
    reg_weight: float = 1.0
    inter_weight: float = 1.0
    flip_prob: float = 0.2
    rot90_prob: float = 0.2
    shift_prob: Optional[float] = None  # default the preset's (0.5 v2 / 0.1 v1)
    scale_prob: float = 0.0
    foreground_probability: float = 0.67  # share of windows centred on labelled/body voxels
    num_workers: Optional[int] = None  # data workers per process; default min(4, cpus - 1)
    device: Optional[str] = None  # cpu | cuda | mps; default cuda when available
    precision: Optional[str] = None  # bf16 | fp16 | fp32; default bf16 on CUDA, fp32 elsewhere
    compile: bool = False  # torch.compile the encoder
    channels_last: bool = False  # channels_last_3d memory format (CUDA)
    cudnn_benchmark: bool = True  # cuDNN autotuning on CUDA (--no_cudnn_benchmark turns it off)
    val_cases: int = 2  # cases held out for the position monitor (0: off)
    val_every: int = 500  # steps between held-out evaluations (and one at step 0)
    val_windows: int = 24  # fixed held-out windows (4 target crops each)
    seed: int = 0
    save_every: int = 500  # steps between checkpoint_latest.pth writes
    log_every: int = 10  # steps between log lines / metrics.jsonl rows (the only host syncs)
    max_nonfinite: int = 20  # abort after this many consecutive non-finite losses
    continue_training: bool = False  # --c
    overwrite: bool = False  # start fresh in a folder that holds another run
    output_folder: Optional[str] = None  # default $nnUNet_results/<Dataset>/VoCo__<plans>__<configuration>
    init: Optional[str] = None  # --init: start from this voco_encoder.pth; not part of the identity (--c ignores it)
    schedule: Optional[dict] = None  # resolved RunSchedule.to_dict(), set by the loop (no flag); kept in checkpoints

    def __post_init__(self):
        problems = flag_problems(self)
        if problems:
            raise UserInputError("; ".join(problems))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def identity(self) -> dict:
        d = self.to_dict()
        return {k: d[k] for k in IDENTITY_FIELDS}


def _flag(field: str, value) -> str:
    shown = " ".join(str(v) for v in value) if isinstance(value, (tuple, list)) else value
    return f"--{field} {shown}"


def flag_problems(config: PretrainConfig) -> list[str]:
    """Every numeric flag of ``config`` outside its range, one phrase each (empty when all are fine)."""
    problems = []
    for field, low in _INT_MINIMUM.items():
        value = getattr(config, field)
        if value is not None and not (isinstance(value, int) and value >= low):
            problems.append(f"{_flag(field, value)} must be an integer >= {low}")
    finite = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
              if isinstance(getattr(config, f.name), float)}
    problems += [f"{_flag(k, v)} must be a finite number" for k, v in finite.items() if not math.isfinite(v)]

    def bad(field, ok):  # None: derived, and a non-finite value was reported above
        value = getattr(config, field)
        return value is not None and (not isinstance(value, float) or math.isfinite(value)) and not ok(value)

    if bad("lr", lambda v: v > 0):
        problems.append(f"{_flag('lr', config.lr)} must be > 0 (the official value is 1e-4)")
    problems += [f"{_flag(k, getattr(config, k))} must be >= 0" for k in _NON_NEGATIVE if bad(k, lambda v: v >= 0)]
    problems += [f"{_flag(k, getattr(config, k))} is a probability: pass a value from 0 to 1" for k in _PROBABILITIES
                 if bad(k, lambda v: 0 <= v <= 1)]
    if bad("embedding_dropout", lambda v: 0 <= v < 1):
        problems.append(f"{_flag('embedding_dropout', config.embedding_dropout)} must be >= 0 and < 1")
    if bad("ema_momentum", lambda v: 0 <= v < 1):
        problems.append(f"{_flag('ema_momentum', config.ema_momentum)} must be >= 0 and < 1 (1 freezes the teacher)")
    if bad("ema_momentum_final", lambda v: 0 <= v <= 1):
        problems.append(f"{_flag('ema_momentum_final', config.ema_momentum_final)} must be from 0 to 1")
    if not problems and config.min_lr > config.lr:
        problems.append(f"--min_lr {config.min_lr} exceeds --lr {config.lr}; the cosine would rise: pass "
                        f"--min_lr <= {config.lr}")
    if not problems and config.warmup_steps is not None and config.warmup_steps > config.num_steps:
        problems.append(f"--warmup_steps {config.warmup_steps} exceeds --num_steps {config.num_steps}, so the learning "
                        f"rate would never reach --lr; pass --warmup_steps <= {config.num_steps}")
    if not problems and 0 == config.pos_weight == config.neg_weight == config.reg_weight == config.inter_weight:
        problems.append("--pos_weight, --neg_weight, --reg_weight and --inter_weight are all 0: the loss would be 0, "
                        "nothing to learn; keep at least one > 0")
    for field in ("crop_size", "grid"):
        value = getattr(config, field)
        if value is not None and (len(value) != 3 or not all(isinstance(v, int) and v >= 1 for v in value)):
            problems.append(f"{_flag(field, value)} needs 3 integers >= 1 (one per array axis 0, 1, 2)")
    if config.grid is not None and len(config.grid) == 3 and math.prod(config.grid) == 1:
        problems.append(f"{_flag('grid', config.grid)} gives a single base crop, so there is no position to predict; "
                        f"split at least one axis (e.g. --grid 1 3 3)")
    return problems
