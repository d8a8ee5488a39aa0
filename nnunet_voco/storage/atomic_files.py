"""Atomic file writes: every file is complete under its final name, or untouched.

Each file is written to a temporary name in its destination folder (``<name>.<random>.tmp``), flushed,
fsynced and moved into place with ``os.replace`` (several files together: all written first, then all
moved), so a crash (or a full disk) never leaves a truncated file under the final name; a full,
read-only or vanished disk raises :class:`~nnunet_voco.storage.disk_errors.DiskWriteError`.
Standard library only, so that callers without torch (the pool, the demo driver) share it.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import IO, Any, Callable, Sequence

from nnunet_voco.storage.disk_errors import disk_write_error, remove_quietly


def write_files_atomic(files: Sequence[tuple[str, str, Callable[[IO], None]]], advice: str = "") -> None:
    """Write several files as one step: every file is complete under its final name, or untouched.

    Each ``(path, mode, write)`` is written by ``write(file_object)`` to a temporary file in the
    destination folder, flushed and fsynced. Only when all of them are on disk are they moved into
    place with ``os.replace``, in the order given (so a reader that looks for the last file finds the
    earlier ones complete). An error while writing (a full disk) removes every temporary file and
    replaces nothing; only a failure between two renames in the same folder could leave the earlier
    files new and the later ones old.

    Args:
        files: ``(path, mode, write)`` per file.
        advice: what to do about a disk error (appended to the :class:`DiskWriteError` message).

    Raises:
        DiskWriteError: the disk is full, read-only, over quota or gone (one line naming the file
            being written).
    """
    staged: list[tuple[str, str]] = []  # (temporary file, final path)
    current = ""
    try:
        for path, mode, write in files:
            current = path
            folder = os.path.dirname(os.path.abspath(path))
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
            staged.append((tmp, path))
            with os.fdopen(fd, mode) as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; these are ordinary shared files
        while staged:
            tmp, current = staged[0]
            os.replace(tmp, current)
            staged.pop(0)
    except BaseException as e:
        # before the space is given back
        disk = disk_write_error(e, current, advice) if isinstance(e, Exception) else None
        for tmp, _ in staged:
            remove_quietly(tmp)
        if disk is not None:
            raise disk from None
        raise


def write_json_atomic(path: str, content: Any, advice: str = "") -> None:
    """Write ``content`` as indented JSON to ``path`` atomically (see :func:`write_files_atomic`)."""
    write_files_atomic([(path, "w", lambda f: json.dump(content, f, indent=2))], advice)
