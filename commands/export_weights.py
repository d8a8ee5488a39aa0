"""``voco_export_weights``: a pre-training run (or encoder file) out in the nnssl layout nnU-Net master reads.

Example::

    voco_export_weights $nnUNet_results/Dataset017_Liver/VoCo__nnUNetResEncUNetLPlans__3d_fullres -o liver_voco_nnssl
    # then, with nnU-Net master: nnUNetv2_preprocess_like_nnssl ... -pc liver_voco_nnssl/checkpoint_final.pth
"""
from __future__ import annotations

import argparse
import sys

from nnunet_voco.command_exit import run_command

PROG = "voco_export_weights"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Write a voco_pretrain encoder (or an imported one) as an nnssl checkpoint folder: "
                    "checkpoint_final.pth (network_weights under encoder., nnssl_adaptation_plan, trainer_name, "
                    "citations), adaptation_plan.json, config.json and README.md. The result is checked before "
                    "writing (weights_only reload, network rebuilt from the plan, strict load with 1 and 2 channels). "
                    "SwinUNETR encoders are refused (nnU-Net master cannot build them).")
    parser.add_argument("source", help="voco_pretrain run folder, or a voco_encoder.pth")
    parser.add_argument("-o", "--output", required=True, help="output folder (created; existing export files replaced)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; return the exit code (0 done, 2 bad input: nothing written, 3 disk full / not
    writable; :mod:`nnunet_voco.command_exit`)."""
    args = _parser().parse_args(argv)

    def export() -> None:
        from nnunet_voco.weights.nnssl_export import export_nnssl

        print("\n".join(export_nnssl(args.source, args.output)))

    # a file torch cannot read (RuntimeError, CheckpointError among them; OSError) is bad input, not a failure
    return run_command(PROG, export, bad_input=(OSError, RuntimeError))

if __name__ == "__main__":
    sys.exit(main())
