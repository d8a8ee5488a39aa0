"""``voco_plan_like``: plans for a dataset whose 3d_fullres network is the encoder of given weights.

Example::

    voco_plan_like openmind_voco.pth -d 17 -p nnUNetResEncUNetLPlans -o nnUNetPlans_like_OpenMindVoCo
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from nnunet_voco.command_exit import run_command
from nnunet_voco.errors import UserInputError

PROG = "voco_plan_like"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Write a plans file for dataset D whose 3d_fullres network is the encoder of WEIGHTS (a "
                    "voco_encoder.pth, e.g. from voco_import_weights): stages, widths, blocks, kernels, strides and "
                    "norm. D's spacing and normalisation are kept (CT stays CT); the patch size is chosen for D's data "
                    "and these strides within the GPU-memory target of the planner that made the base plans. Prints "
                    "the next commands. If D's plans already build that encoder, says so and writes nothing.")
    parser.add_argument("weights", help="voco_encoder.pth (ours or imported)")
    parser.add_argument("-d", dest="dataset", required=True, help="dataset id or name (planned: nnUNetv2_plan_and_preprocess)")
    parser.add_argument("-p", dest="base_plans", default="nnUNetPlans",
                        help="[OPTIONAL] base plans whose spacing, normalisation and other configurations are kept. "
                             "Default: %(default)s")
    parser.add_argument("-o", dest="plans_name", default=None,
                        help="[OPTIONAL] name of the new plans. Default: <base>_like_<weights file name>")
    parser.add_argument("--spacing", choices=("dataset", "pretraining"), default="dataset",
                        help="[OPTIONAL] dataset (default): keep D's spacing; pretraining: resample to the weights' "
                             "pre-training spacing")
    parser.add_argument("--topology", choices=("weights", "dataset"), default="weights",
                        help="[OPTIONAL] weights (default): the weights' encoder exactly (1:1 load); dataset: nnU-Net's "
                             "kernels, strides and stages for D with the weights' widths and blocks (the trainer "
                             "averages kernels and leaves extra stages random)")
    parser.add_argument("-pl", dest="planner", default=None,
                        help="[OPTIONAL] nnU-Net planner whose GPU-memory target sizes the patch. Default: the one that "
                             "made the base plans")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing plans file of that name")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; return the exit code (0 done or nothing to do, 2 bad input: nothing written, 3 disk
    full / not writable; :mod:`nnunet_voco.command_exit`)."""
    args = _parser().parse_args(argv)

    def plan() -> None:
        from nnunet_voco.nnunet.planner_budget import memory_budget
        from nnunet_voco.storage.atomic_files import write_json_atomic
        from nnunet_voco.trainers.discovery import ensure_startup_hook
        from nnunet_voco.weights.plan_like import default_plans_name, next_commands, plans_like
        from nnunet_voco.weights.pretrain_init import read_encoder_file
        from nnunet_voco.weights.target_plans import fit_of, read_target

        ensure_startup_hook()  # the next commands are nnUNetv2_train -tr nnUNetTrainerVoCo
        state, meta, _ = read_encoder_file(args.weights)
        if meta.get("encoder_family") != "cnn":
            raise UserInputError(f"{args.weights} is a SwinUNETR encoder: it fine-tunes with -tr nnUNetTrainerVoCoSwin on "
                                 f"any 3-D plans, so no plans like it are needed")
        target = read_target(args.dataset, args.base_plans)
        fit = fit_of(state, meta, target.encoder())
        if fit.verdict in ("1:1", "channels") and args.spacing == "dataset" and args.topology == "weights":
            print(f"{target.dataset_name}'s {args.base_plans} 3d_fullres already builds the weights' encoder "
                  f"({fit.plan.loaded}/{fit.plan.expected} tensors load{' 1:1' if fit.verdict == '1:1' else ', input channels adapted'}); "
                  f"nothing written. Train with: nnUNet_voco_weights={args.weights} nnUNetv2_train {target.dataset_id} "
                  f"3d_fullres 0 -tr nnUNetTrainerVoCo -p {args.base_plans}")
            return
        name = args.plans_name or default_plans_name(args.base_plans, args.weights)
        out = os.path.join(os.path.dirname(target.plans_file), name + ".json")
        budget = memory_budget(target.dataset_name, args.planner or target.plans.get("experiment_planner_used")
                               or "ExperimentPlanner")
        result = plans_like(meta, os.path.abspath(args.weights), target, name, budget, args.spacing, args.topology)
        if os.path.isfile(out) and not args.overwrite:
            with open(out, encoding="utf-8") as f:
                if json.load(f) != json.loads(json.dumps(result.plans)):
                    raise UserInputError(f"{out} exists with other content; pass -o ANOTHER_NAME or --overwrite")
        write_json_atomic(out, result.plans)
        if fit.verdict == "refused":
            print(f"{args.base_plans} does not fit the weights: {fit.reason}")
        print("\n".join(result.lines))
        print(f"wrote {out}\nnext:")
        print("\n".join("  " + c for c in next_commands(os.path.abspath(args.weights), target.dataset_id, name)))

    # a file torch cannot read (RuntimeError, CheckpointError among them; OSError) is bad input, not a failure
    return run_command(PROG, plan, bad_input=(OSError, RuntimeError))

if __name__ == "__main__":
    sys.exit(main())
