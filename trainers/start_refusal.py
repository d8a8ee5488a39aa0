"""A VoCo trainer that cannot start says so in one line, exits with code 2 and leaves no empty fold behind.

``nnUNetv2_train`` (nnU-Net 2.8.1 ``run_training``) builds the trainer, whose ``__init__`` already
creates ``<trainer folder>/fold_N`` and writes a log file into it, and only then calls
``run_training()`` -> ``on_train_start()``, where the VoCo weights are looked up and loaded (the
lookup cannot move into ``__init__``: ``--val``, ``--c`` and inference build the trainer too and need
no VoCo file). nnU-Net's entry point catches nothing, so a plain exception ends in a 40-line
traceback. :func:`refuse_unusable_weights` turns the weights' user errors (none found: the
``voco_pretrain`` command to run; an encoder that was never trained) into
``nnUNetv2_train: error: <one line>`` on stderr and ``SystemExit(2)``, after removing what this run
created: its own log file, then the fold, trainer and dataset folders under ``$nnUNet_results`` while
that leaves them empty (a folder that holds anything else, e.g. an earlier run, is kept as it is).

Under ``-num_gpus > 1`` nnU-Net spawns one process per GPU; each prints the line and exits with 2,
and ``torch.multiprocessing`` then reports the exit code of the first one.
"""
from __future__ import annotations

import contextlib
import os

from nnunet_voco.command_exit import EXIT_BAD_INPUT, print_error
from nnunet_voco.errors import UserInputError


def remove_fresh_output(trainer) -> None:
    """Delete the log file this trainer wrote, then its fold, trainer and dataset folders while they are empty."""
    with contextlib.suppress(OSError):
        os.remove(trainer.log_file)
    for folder in (trainer.output_folder, trainer.output_folder_base, os.path.dirname(trainer.output_folder_base)):
        try:
            os.rmdir(folder)  # only an empty folder: never a file of another run
        except OSError:
            return


@contextlib.contextmanager
def refuse_unusable_weights(trainer):
    """Inside: look up and load the VoCo weights. A missing file or a user error exits with code 2."""
    try:
        yield
    except (FileNotFoundError, UserInputError) as e:
        remove_fresh_output(trainer)
        print_error("nnUNetv2_train", e)
        raise SystemExit(EXIT_BAD_INPUT) from None
