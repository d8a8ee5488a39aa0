"""The error type of bad user input, shared by the library and every command.

:class:`UserInputError` is a ``ValueError`` whose message is one line naming the value and the fix;
the commands print it as ``<command>: error: <message>`` and exit with code 2
(:mod:`nnunet_voco.command_exit`). It lives outside the nnU-Net door because flags, pools and
weights raise it too; ``nnunet_voco.nnunet`` re-exports it.
"""
from __future__ import annotations


class UserInputError(ValueError):
    """Bad input from the user: the command prints the message and exits with code 2."""
