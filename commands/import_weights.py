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

from nnunet_voco.checkpoint import CheckpointError
from nnunet_voco.nnunet import UserInputError
from nnunet_voco.storage.disk_errors import EXIT_CODE as DISK_EXIT_CODE
from nnunet_voco.storage.disk_errors import DiskWriteError

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
    """Exit codes: 0 done, 2 bad input (nothing written), 3 disk full / not writable."""
    parser = _parser()
    args = parser.parse_args(argv)
    from nnunet_voco.trainers.discovery import ensure_startup_hook

    ensure_startup_hook()  # the next commands are nnUNetv2_train -tr nnUNetTrainerVoCo
    if not args.inspect and not args.output:
        parser.error("-o OUTPUT is required (or --inspect)")
    if args.dataset is not None and not args.inspect:
        parser.error("-d is used with --inspect; to write plans like the weights use voco_plan_like")
    from nnunet_voco.weights.importer import import_weights, write_imported
    from nnunet_voco.weights.inspection import describe_fit, describe_weights

    try:
        result = import_weights(args.source, args.in_channels, args.feature_size)
        if args.inspect:
            print("\n".join(describe_weights(result)))
            if args.dataset is not None:
                from nnunet_voco.weights.target_plans import read_target

                target = read_target(args.dataset, args.plans, args.configuration)
                print("\n".join(describe_fit(result, target, args.source)))
            return 0
        write_imported(result, args.output, args.source)
    except DiskWriteError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return DISK_EXIT_CODE
    except (UserInputError, CheckpointError, OSError, ValueError) as e:
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print("\n".join(result.lines()))
    print(f"wrote {args.output} (+ {args.output.rsplit('.', 1)[0]}.json); next: voco_import_weights --inspect "
          f"{args.output} -d DATASET, or voco_plan_like {args.output} -d DATASET")
    return 0


if __name__ == "__main__":
    sys.exit(main())
