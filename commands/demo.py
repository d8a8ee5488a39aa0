"""``voco_demo``: VoCo pre-training versus training from scratch, end to end, on a synthetic phantom.

Example::

    voco_demo                      # 12 min on 2 idle CPU cores (measured), work folder ./voco_demo_work
    voco_demo --quick              # smoke run (CI), its stages took 99 s at load 5
    voco_demo --out /tmp/demo -device cuda

The stages, the split and the re-use rules are documented in :mod:`nnunet_voco.demo.stages` and
:mod:`nnunet_voco.demo.workflow`, the sizes of the default run and of ``--quick`` in
:mod:`nnunet_voco.demo.run_sizes`; this module only parses flags.
"""
from __future__ import annotations

import time

_STARTED = time.perf_counter()  # the wall time a user waits for includes the imports below

import argparse  # noqa: E402
import sys  # noqa: E402


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> int:
    """Run the command; return the exit code (0 ok, 1 a stage failed, 2 usage error, 130 interrupted)."""
    parser = argparse.ArgumentParser(
        prog="voco_demo",
        description="Run the whole nnunet-voco workflow offline on a SYNTHETIC CT-like phantom (not patient data): "
                    "nnUNetv2_plan_and_preprocess, voco_preprocess_unlabeled (unlabelled pool), voco_pretrain on the "
                    "pool only (with its held-out position monitor), then nnUNetv2_train for four arms with 3 seeds "
                    "each: frozen VoCo encoder vs frozen random encoder (probe) and VoCo fine-tuning vs scratch. "
                    "Prints the held-out position accuracy and the Dice tables (mean +/- sd, per seed, with a verdict) "
                    "and writes results.json and a PNG figure. Running it again reuses finished stages.",
        epilog="Outputs: DIR/default/ (or DIR/quick/) holds results.txt (the tables), results.json, voco_demo.png and "
               "logs/<stage>.log; nnU-Net's folders are DIR/nnUNet_raw, DIR/nnUNet_preprocessed and "
               "DIR/nnUNet_results. The demo writes a splits_final.json of identical folds (training cases vs "
               "held-out cases); the demo trainers use the fold number as the seed, and nnU-Net's final validation "
               "(fold_SEED/validation/summary.json) gives the Dice.")
    parser.add_argument("--out", default="voco_demo_work", metavar="DIR",
                        help="work folder holding nnUNet_raw/_preprocessed/_results and the report "
                             "(default: ./voco_demo_work)")
    parser.add_argument("--size", choices=("quick", "default", "full", "gpu"), default=None,
                        help="run size (default: default). quick: a smoke test whose Dice means nothing; default: "
                             "12 minutes on 2 idle CPU cores (measured); full: 5 times the default fine-tuning "
                             "budget, at which scratch learned every organ on a tuning case (hours on CPU, resumable); gpu: sized for one GPU (-device cuda). Budgets, "
                             "wall times and results of each are in README")
    parser.add_argument("--quick", action="store_true", help="same as --size quick")
    parser.add_argument("--dry_run", action="store_true",
                        help="print every stage and its command without running or writing anything (rehearses "
                             "e.g. --size gpu -device cuda on a CPU machine)")
    parser.add_argument("--verbose", action="store_true",
                        help="stream every command's full output (default: one line per stage; the full output "
                             "is in DIR/<size>/logs/<stage>.log)")
    parser.add_argument("-device", choices=("cpu", "cuda"), default=None,
                        help="device for pre-training and training (default: cuda if available, else "
                             "cpu). The budget is sized for CPU either way")
    args = parser.parse_args(argv)
    if args.quick and args.size not in (None, "quick"):
        parser.error(f"--quick contradicts --size {args.size}; pass one of them")
    size = "quick" if args.quick else args.size or "default"

    from nnunet_voco.command_exit import run_command
    from nnunet_voco.demo.workflow import dry_run, run_demo

    if args.dry_run:
        print("\n".join(dry_run(args.out, size, args.device or "cpu")))
        return 0
    from nnunet_voco.trainers.discovery import ensure_startup_hook

    ensure_startup_hook()  # so that nnUNetv2_train/predict find the demo trainers

    def demo() -> None:
        run_demo(args.out, size, args.device or _default_device(), args.verbose, _STARTED)

    return run_command("voco_demo", demo, failed=(RuntimeError,),
                       interrupted="interrupted; run the same command again to resume (finished stages are reused)")


if __name__ == "__main__":
    sys.exit(main())
