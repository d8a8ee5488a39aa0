"""``voco_pretrain``: VoCo self-supervised pre-training on nnU-Net-preprocessed datasets.

Also runnable as ``python -m nnunet_voco.pretrain.cli`` (that is how torchrun starts it).

This module imports only light modules at its top (argparse, the config and the names of encoders
and presets): ``--help`` and a bad flag answer before torch and nnU-Net are loaded. The flags are
checked whole by :class:`~nnunet_voco.pretrain.config.PretrainConfig`; exceptions become exit codes
in :func:`nnunet_voco.command_exit.run_command`.
"""
from __future__ import annotations

import argparse
import sys

from nnunet_voco.command_exit import EXIT_BAD_INPUT, print_error, run_command
from nnunet_voco.encoders import ENCODER_CHOICES
from nnunet_voco.errors import UserInputError
from nnunet_voco.pretrain.config import PretrainConfig
from nnunet_voco.voco.presets import PRESET_NAMES, V1, V2

PROG = "voco_pretrain"
AXES = ("N0", "N1", "N2")  # the preprocessed array axes 0, 1, 2, in the order of the plans' patch_size and spacing


def build_parser() -> argparse.ArgumentParser:
    d = PretrainConfig(datasets=("0",))
    p = argparse.ArgumentParser(
        prog=PROG,
        description="VoCo (Volume Contrast) pre-training of the encoder nnU-Net builds for a dataset. Run "
                    "nnUNetv2_plan_and_preprocess first; afterwards fine-tune with "
                    "nnUNetv2_train D 3d_fullres FOLD -tr nnUNetTrainerVoCo. Multi-GPU: "
                    "torchrun --nproc_per_node N -m nnunet_voco.pretrain.cli (same flags).",
    )
    add = p.add_argument
    add("-d", dest="datasets", nargs="+", required=True,
        help="dataset id(s) or name(s). Several datasets are pooled; the first one's plans define the encoder, "
             "the crops and the output folder")
    add("-p", dest="plans", default=d.plans, help="[OPTIONAL] plans identifier, e.g. nnUNetResEncUNetMPlans. "
        "Default: %(default)s")
    add("-c", dest="configuration", default=d.configuration, help="[OPTIONAL] configuration. Default: %(default)s")
    add("-o", dest="output_folder", default=None,
        help="[OPTIONAL] output folder. Default: $nnUNet_results/<Dataset>/VoCo__<plans>__<configuration>, where "
             "nnUNetTrainerVoCo looks for the weights")
    add("-device", dest="device", choices=("cpu", "cuda", "mps"), default=None,
        help="[OPTIONAL] device. Default: cuda when available, else cpu")
    add("--preset", choices=PRESET_NAMES, default=d.preset,
        help="v2 (default): TPAMI code (projector EMA, -log negatives, inter-volume term); v1: CVPR repo code "
             "(full EMA teacher, symmetrised logits, squared negatives)")
    add("--encoder", choices=ENCODER_CHOICES, default=d.encoder,
        help="plans (default): the CNN of the plans (PlainConvUNet / ResEnc); swin_b/l/h: MONAI SwinUNETR-v2 "
             "(feature size 48/96/192), fine-tune with nnUNetTrainerVoCoSwin")
    add("--swin_feature_size", type=int, default=None, help="[OPTIONAL] Swin feature size override (multiple of 12)")
    add("--gradient_checkpointing", action="store_true", help="Swin: recompute activations to save memory")
    add("--num_steps", type=int, default=d.num_steps,
        help="optimiser steps. Default %(default)s; the official runs used 250k (v1) and up to 2M (v2) steps on "
             "thousands of CTs. Watch the held-out position accuracy (log, metrics.jsonl, progress.png) to see "
             "whether more steps still help")
    add("--warmup_steps", type=int, default=None, help="linear warm-up steps. Default: min(5000, num_steps/20)")
    add("--batch_size", type=int, default=None,
        help="volumes per step per process. Default: derived from the plans' batch size so that a step fits "
             "nnU-Net's GPU-memory target (printed at start)")
    add("--num_targets", type=int, default=d.num_targets, help="target crops per volume. Default %(default)s")
    add("--grid", type=int, nargs=3, default=None, metavar=AXES,
        help="base crops along the preprocessed array axes 0, 1, 2 (the order of the plans' patch_size and "
             "spacing; nnU-Net usually puts the coarse axis first). Default: 3x3 over the two in-plane axes, 1 on "
             "the other (TPAMI recipe); 2x2 when 3x3 crops of the minimum size do not fit the median case. "
             "Isotropic data: the shortest axis is left whole")
    add("--crop_size", type=int, nargs=3, default=None, metavar=AXES,
        help="crop edge in voxels along the preprocessed array axes 0, 1, 2 (the order of the plans' patch_size "
             "and spacing). Default: fitted to the data, so that the window (grid x crop) fits inside the "
             "median case: per axis the largest multiple of the encoder's total stride that fits, at most the "
             "patch size, at least max(stride, 16) (the rule and result are printed). Must be divisible by the "
             "encoder's total stride and leave its deepest feature map more than one voxel")
    add("--lr", type=float, default=d.lr, help="peak AdamW learning rate. Default %(default)s (official); "
        "lower it if the positive loss diverges")
    add("--min_lr", type=float, default=d.min_lr, help="learning rate at the end of the cosine. Default %(default)s")
    add("--weight_decay", type=float, default=d.weight_decay, help="AdamW weight decay. Default %(default)s")
    add("--grad_clip", type=float, default=d.grad_clip, help="max gradient norm (0 = off). Default %(default)s")
    add("--ema_momentum", type=float, default=d.ema_momentum,
        help="teacher EMA momentum. Default %(default)s as in both official codes; the teacher is load-bearing "
             "(without it the loss stalls)")
    add("--ema_momentum_final", type=float, default=None, help="[OPTIONAL] cosine-ramp the momentum to this value")
    add("--head_dim", type=int, default=None, help=f"projector width. Default {V2.head_dim} (v2) / {V1.head_dim} (v1)")
    add("--embedding_dropout", type=float, default=None,
        help=f"v2 dropout on the pooled embedding. Default {V2.embedding_dropout}")
    add("--row_dropout", action="store_true",
        help="drop whole embeddings, reproducing the official v2 Dropout1d behaviour on a 2-D matrix")
    for term, what in (("pos", "positive prediction"), ("neg", "negative prediction"), ("reg", "base regulariser"),
                       ("inter", "v2 inter-volume")):
        add(f"--{term}_weight", type=float, default=1.0, help=f"weight of the {what} term. Default 1")
    add("--flip_prob", type=float, default=d.flip_prob,
        help="per-axis flip probability per crop. Default %(default)s (official). On short CPU runs 0 (with "
             "--rot90_prob 0) learned the pretext faster: held-out position accuracy 0.30 -> 0.45 vs 0.30 -> 0.35 "
             "after 300 steps on a phantom pool (README)")
    add("--rot90_prob", type=float, default=d.rot90_prob, help="in-plane rot90 probability. Default %(default)s "
        "(official)")
    add("--shift_prob", type=float, default=None,
        help=f"intensity shift (+-0.1) probability. Default {V2.shift_prob} v2 / {V1.shift_prob} v1")
    add("--scale_prob", type=float, default=d.scale_prob, help="intensity scale (x[0.9,1.1]) probability. "
        "Default %(default)s")
    add("--foreground_probability", type=float, default=d.foreground_probability,
        help="share of windows centred on labelled (or body-mask) voxels. Default %(default)s")
    add("--num_workers", type=int, default=None,
        help="data-loading workers per process. Default min(4, CPUs / processes on this machine - 1)")
    add("--precision", choices=("bf16", "fp16", "fp32"), default=None,
        help="autocast precision of the encoder. Default bf16 on CUDA where the GPU has it natively, else fp16 "
             "with loss scaling; fp32 elsewhere (pooling, projector and loss always run in fp32)")
    add("--compile", action="store_true",
        help="torch.compile the encoder (CUDA); a compiled run resumes with or without --compile")
    add("--channels_last", action="store_true", help="channels_last_3d memory format (CUDA)")
    add("--no_cudnn_benchmark", dest="cudnn_benchmark", action="store_false",
        help="CUDA: keep PyTorch's default convolution heuristics instead of cuDNN autotuning (on by default: the "
             "crops have one fixed shape)")
    add("--val_cases", type=int, default=d.val_cases,
        help="cases held out of training for the position monitor (deterministic, listed in config.json); "
             "0 disables it. Default %(default)s")
    add("--val_every", type=int, default=d.val_every,
        help="steps between held-out evaluations (also at step 0 and at the end). Default %(default)s")
    add("--val_windows", type=int, default=d.val_windows,
        help="fixed held-out windows evaluated each time (4 target crops each). Default %(default)s")
    add("--seed", type=int, default=d.seed, help="random seed. Default %(default)s")
    add("--save_every", type=int, default=d.save_every,
        help="steps between checkpoint_latest.pth writes. Default %(default)s")
    add("--log_every", type=int, default=d.log_every,
        help="steps between metric rows (metrics.jsonl, log; the only host syncs). Default %(default)s")
    add("--max_nonfinite", type=int, default=d.max_nonfinite,
        help="abort after this many consecutive non-finite losses. Default %(default)s")
    add("--init", dest="init", default=None, metavar="WEIGHTS",
        help="[OPTIONAL] start from these weights (a voco_encoder.pth: voco_pretrain's, or one written by "
             "voco_import_weights): the encoder, and the projector where its shapes match. The plans must build the "
             "weights' encoder (else the error names the voco_plan_like command). With --c the run resumes its own "
             "checkpoint instead")
    add("--c", dest="continue_training", action="store_true",
        help="continue the run in the output folder (step, optimiser, schedule, scaler, teacher, RNG)")
    add("--overwrite", action="store_true", help="start a new run in a folder that holds another run")
    return p


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    values = vars(args).copy()
    values["datasets"] = tuple(values["datasets"])
    for key in ("grid", "crop_size"):
        if values[key] is not None:
            values[key] = tuple(values[key])
    return PretrainConfig(**values)


def main(argv: list[str] | None = None) -> int:
    """Run ``voco_pretrain``; returns the exit code (0 done, 1 training failed, 2 bad input or folder in
    use by another run, 3 disk full / not writable, 128 + signal when interrupted; see
    :mod:`nnunet_voco.command_exit`)."""
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)  # every flag, before torch is imported or anything is written
    except UserInputError as e:
        print_error(PROG, e)
        return EXIT_BAD_INPUT
    from nnunet_voco.checkpoint import CheckpointError
    from nnunet_voco.pretrain.loop import Interrupted, TrainingAborted, run_pretraining
    from nnunet_voco.trainers.discovery import ensure_startup_hook

    ensure_startup_hook()

    def pretrain() -> None:
        run_pretraining(config)

    return run_command(PROG, pretrain, bad_input=(CheckpointError,),
                       failed=(TrainingAborted,), quiet_exit=(Interrupted,),  # preempted: the state was saved
                       interrupted="interrupted before the first step; nothing to save")


if __name__ == "__main__":
    sys.exit(main())
