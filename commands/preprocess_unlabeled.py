"""``voco_preprocess_unlabeled``: preprocess unlabelled scans with a planned dataset's plans.

Example::

    voco_preprocess_unlabeled -i /data/unlabelled_ct -d 17 -o 517 -np 8
    voco_pretrain -d 517 17

All work happens in :mod:`nnunet_voco.pool.create`; this module only parses flags.
"""
from __future__ import annotations

import argparse
import os
import sys

PROG = "voco_preprocess_unlabeled"


def main(argv: list[str] | None = None) -> int:
    """Run the command; return the exit code (0 ok, 1 nothing usable, 2 usage error or the pool is being
    written by another run, 3 disk full / not writable, 130 interrupted; :mod:`nnunet_voco.command_exit`)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Preprocess unlabelled images exactly like a case of the planned dataset TARGET (same "
                    "transpose, crop, resampling and normalisation with TARGET's intensity statistics) into a new "
                    "preprocessed dataset for voco_pretrain. The seg written with each case is a body mask, not an "
                    "annotation. Re-running the same command resumes; broken files are skipped and listed.")
    parser.add_argument("-i", nargs="+", required=True, metavar="FOLDER",
                        help="folders with images (.nii.gz, .nii, .nrrd, .mha, .tif, ...). Multi-channel cases use "
                             "nnU-Net's CASE_0000, CASE_0001 naming; single-channel files may omit the suffix")
    parser.add_argument("-d", required=True, metavar="TARGET",
                        help="id or name of the planned dataset whose plans and intensity statistics are used")
    parser.add_argument("-o", required=True, metavar="NEW_ID_OR_NAME",
                        help="id of the new pool (named after TARGET + 'Unlabeled') or a full DatasetNNN_Name. An "
                             "existing pool made from the same TARGET, plans and configuration is resumed")
    parser.add_argument("-p", default="nnUNetPlans", metavar="PLANS", help="plans identifier (default: nnUNetPlans)")
    parser.add_argument("-c", default="3d_fullres", metavar="CONFIGURATION",
                        help="configuration of the plans (default: 3d_fullres)")
    parser.add_argument("-np", type=int, default=min(8, os.cpu_count() or 1), metavar="N",
                        help="worker processes (default: min(8, CPUs)). Each holds one image in memory several "
                             "times over; lower it if workers are killed for memory. 1 works in this process")
    parser.add_argument("--dicom", action="store_true",
                        help="also read DICOM series from sub-folders of -i (each series is one single-channel case)")
    args = parser.parse_args(argv)
    if args.np < 1:
        parser.error(f"-np must be at least 1, got {args.np}")

    from nnunet_voco.command_exit import EXIT_FAILED, run_command

    def preprocess() -> int:
        from nnunet_voco.pool.create import create_unlabeled_pool

        report = create_unlabeled_pool(args.i, args.d, args.o, plans_name=args.p, configuration=args.c,
                                       num_processes=args.np, dicom=args.dicom)
        print(report.summary())
        if not report.written and not report.already_present:
            print(f"{PROG}: error: no usable image, the pool is empty", file=sys.stderr)
            return EXIT_FAILED
        return 0

    return run_command(PROG, preprocess, interrupted="interrupted; finished cases are kept, run the same command "
                                                     "again to resume")


if __name__ == "__main__":
    sys.exit(main())
