"""Configuration of one ``voco_pretrain`` run (one field per flag)."""
from __future__ import annotations

import dataclasses
from typing import Optional

from nnunet_voco.voco.presets import DEFAULT_PRESET

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

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def identity(self) -> dict:
        d = self.to_dict()
        return {k: d[k] for k in IDENTITY_FIELDS}
