"""``voco_import_weights``: any published checkpoint in, ``voco_encoder.pth`` out; or ``--inspect`` it.

Examples::

    voco_import_weights ResEncL-OpenMind-VoCo/ -o openmind_voco.pth        # nnssl folder (HF snapshot)
    voco_import_weights checkpoint_final.pth -o other_task.pth            # nnU-Net checkpoint of another task
    voco_import_weights VoCo_B_SSL_head.pt -o voco_b.pth                  # released VoCo Swin
    voco_import_weights --inspect openmind_voco.pth -d 17                 # does it fit Dataset017's plans?
"""
from __future__ import annotations

import argparse
import sys

from nnunet_voco.command_exit import run_command

PROG = "voco_import_weights"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Convert pre-trained weights into an nnunet-voco voco_encoder.pth (fine-tune with "
                    "nnUNet_voco_weights=FILE nnUNetv2_train ... -tr nnUNetTrainerVoCo, or continue pre-training with "
                    "voco_pretrain --init FILE). Reads nnssl/OpenMind checkpoints (plan embedded, beside the file as "
                    "adaptation_plan.json, or none), nnU-Net checkpoint_final.pth files, bare dynamic-network-"
                    "architectures state dicts, VoComni_nnunet.pt, the VoCo Swin releases and voco_encoder.pth. Files "
                    "are read with weights_only=True; numpy numbers only through a fixed allow-list. Primus and 2-D "
                    "networks are refused.")
    parser.add_argument("source", help="checkpoint file, or the folder it was downloaded to")
    parser.add_argument("-o", "--output", help="output file, e.g. voco_encoder.pth (its .json is written beside it)")
    parser.add_argument("--inspect", action="store_true",
                        help="print the format, architecture and recorded pre-training facts; write nothing")
    parser.add_argument("-d", dest="dataset", default=None,
                        help="[OPTIONAL] with --inspect: say whether the weights fit this dataset's plans as they are, "
                             "with adaptations, or need voco_plan_like (and why)")
    parser.add_argument("-p", dest="plans", default="nnUNetPlans", help="[OPTIONAL] plans of -d. Default: %(default)s")
    parser.add_argument("-c", dest="configuration", default="3d_fullres",
                        help="[OPTIONAL] configuration of -d. Default: %(default)s")
    parser.add_argument("--in_channels", type=int, default=None,
                        help="[OPTIONAL] adapt the first convolution to this many input channels now (each new "
                             "channel gets the channel-summed kernel / the new count). Default: keep the file's; "
                             "the trainers adapt it at load time anyway")
    parser.add_argument("--feature_size", type=int, default=None,
                        help="[OPTIONAL] Swin only: expected feature size (48 = B, 96 = L, 192 = H)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; return the exit code (0 done, 2 bad input: nothing written, 3 disk full / not
    writable; :mod:`nnunet_voco.command_exit`)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.inspect and not args.output:
        parser.error("-o OUTPUT is required (or --inspect)")
    if args.dataset is not None and not args.inspect:
        parser.error("-d is used with --inspect; to write plans like the weights use voco_plan_like")
    for flag, value in (("--in_channels", args.in_channels), ("--feature_size", args.feature_size)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")

    def convert() -> None:
        from nnunet_voco.trainers.discovery import ensure_startup_hook
        from nnunet_voco.weights.importer import import_weights, write_imported
        from nnunet_voco.weights.inspection import describe_fit, describe_weights

        ensure_startup_hook()  # the next commands are nnUNetv2_train -tr nnUNetTrainerVoCo
        result = import_weights(args.source, args.in_channels, args.feature_size)
        if args.inspect:
            print("\n".join(describe_weights(result)))
            if args.dataset is not None:
                from nnunet_voco.weights.target_plans import read_target

                print("\n".join(describe_fit(result, read_target(args.dataset, args.plans, args.configuration),
                                             args.source)))
            return
        write_imported(result, args.output, args.source)
        print("\n".join(result.lines()))
        print(f"wrote {args.output} (+ {args.output.rsplit('.', 1)[0]}.json); next: voco_import_weights --inspect "
              f"{args.output} -d DATASET, or voco_plan_like {args.output} -d DATASET")

    # a file torch cannot read (RuntimeError, CheckpointError among them; OSError) is bad input, not a failure
    return run_command(PROG, convert, bad_input=(OSError, RuntimeError))


if __name__ == "__main__":
    sys.exit(main())
