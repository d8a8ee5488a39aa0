"""How every command ends: an exception becomes one line on stderr and an exit code.

Exit codes (README "Faults and how they are handled"), the same for every ``voco_*`` command:

====  ==========================================================================================
0     done
1     the work failed (``voco_pretrain``: ``--max_nonfinite`` non-finite losses; ``voco_demo``: a
      stage failed); passed as ``failed``
2     bad input: :class:`~nnunet_voco.errors.UserInputError` and every other ``ValueError``
      (``FolderBusy`` too: the folder is in use by another run), ``FileNotFoundError``, and what a
      command adds as ``bad_input``
3     disk full or not writable (:class:`~nnunet_voco.storage.disk_errors.DiskWriteError`, or an
      ``OSError`` whose cause the disk check recognises)
130   Ctrl-C (``KeyboardInterrupt``), with the command's own advice
128+N a signal the command handled itself (``quiet_exit`` exceptions carry ``exit_code``)
====  ==========================================================================================

The message printed is ``<prog>: error: <the exception's message on one line>``; anything else propagates
with its traceback (a bug, not an input). Every lock this process still holds is released on the
way out. This module imports nothing heavy, so ``--help`` stays fast.
"""
from __future__ import annotations

import sys
from typing import Callable

EXIT_DONE, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_DISK, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
BAD_INPUT = (ValueError, FileNotFoundError)  # UserInputError and FolderBusy are ValueErrors


def one_line(error: BaseException) -> str:
    """An exception's whole message on one line (line breaks and runs of spaces become one space; its type
    name when the message is empty)."""
    return " ".join(str(error).split()) or type(error).__name__


def print_error(prog: str, error: BaseException | str) -> None:
    """Print ``<prog>: error: <message>`` on one line to stderr."""
    message = error if isinstance(error, str) else one_line(error)
    print(f"{prog}: error: {message}", file=sys.stderr)


def run_command(prog: str, body: Callable[[], int | None], *, bad_input: tuple = (), failed: tuple = (),
                quiet_exit: tuple = (), interrupted: str = "interrupted") -> int:
    """Run ``body`` and map how it ends to an exit code (table above).

    Args:
        prog: the command's name, the prefix of every message.
        body: the command's work; returns an exit code, or None for 0.
        bad_input: further exception types that mean bad input (exit 2).
        failed: exception types that mean the work failed (exit 1).
        quiet_exit: exception types that carry their own ``exit_code`` and were already reported.
        interrupted: what to print after Ctrl-C (after ``<prog>: ``).

    Returns:
        The exit code.
    """
    from nnunet_voco.storage.disk_errors import DiskWriteError, disk_write_error
    from nnunet_voco.storage.folder_lock import release_all

    try:
        code = body()
        return EXIT_DONE if code is None else int(code)
    except DiskWriteError as e:
        print_error(prog, e)
        return EXIT_DISK
    except tuple(quiet_exit) as e:
        return int(e.exit_code)
    except tuple(failed) as e:
        print_error(prog, e)
        return EXIT_FAILED
    except BAD_INPUT + tuple(bad_input) as e:
        print_error(prog, e)
        return EXIT_BAD_INPUT
    except OSError as e:  # a write no handler knew of: still one line when the disk is the cause
        disk = disk_write_error(e, e.filename) if e.filename else None
        if disk is None:
            raise
        print_error(prog, disk)
        return EXIT_DISK
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        release_all()  # the locks of output folders and pools, on every way out
