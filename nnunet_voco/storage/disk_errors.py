"""Failed writes whose cause is the disk: full, read-only, over quota, not permitted, or gone.

Libraries report these in different ways. ``open``/``json`` raise ``OSError(ENOSPC)``; ``torch.save``
into a file object raises ``RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos``
chained from the ``OSError``; blosc2 raises ``RuntimeError: Error while creating the NDArray`` with no
errno at all. :func:`disk_problem` therefore looks for an errno along the exception chain first and
then asks the file system itself (``statvfs``: no free blocks, or mounted read-only). Call it before
removing a partly written temporary file, which would give the space back.

Commands turn :class:`DiskWriteError` into one line and exit code :data:`EXIT_CODE`.
"""
from __future__ import annotations

import errno
import os

EXIT_CODE = 3  # "disk full / not writable", distinct from 1 (training failed) and 2 (bad input)
NEARLY_FULL_BYTES = 1 << 20  # less than this free after a failed write: the disk is what failed

_REASONS = {
    errno.ENOSPC: "No space left on device",
    errno.EDQUOT: "Disk quota exceeded",
    errno.EROFS: "Read-only file system",
    errno.EACCES: "Permission denied",
    errno.EPERM: "Operation not permitted",
    errno.EFBIG: "File too large",
    errno.EIO: "Input/output error",
}


class DiskWriteError(RuntimeError):
    """A file could not be written because of the disk; the message is one line naming the file.

    Args:
        path: the file that could not be written.
        reason: what the disk said, e.g. ``"No space left on device"``.
        advice: what to do about it (appended after ``;``).
        context: inserted after the path, e.g. ``" at step 4"``.
    """

    def __init__(self, path: str, reason: str, advice: str = "", context: str = ""):
        super().__init__(f"cannot write {path}{context} ({reason})" + (f"; {advice}" if advice else ""))
        self.path, self.reason, self.advice, self.context = path, reason, advice, context

    def __reduce__(self):  # travels back from pool worker processes
        return DiskWriteError, (self.path, self.reason, self.advice, self.context)


def disk_problem(error: BaseException, path: str) -> str | None:
    """Why writing ``path`` failed, if the disk is the cause; None for any other failure.

    Args:
        error: the exception the writing library raised.
        path: the file that was being written.

    Returns:
        A reason such as ``"No space left on device"``, ``"Read-only file system"`` or
        ``"its folder ... no longer exists"``, or None.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = getattr(current, "errno", None)
        if code in _REASONS:
            return _REASONS[code]
        if code == errno.ENOENT and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            return f"its folder {os.path.dirname(os.path.abspath(path))} no longer exists"
        current = current.__cause__ or current.__context__
    return _file_system_state(path)


def _file_system_state(path: str) -> str | None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"its folder {folder} no longer exists"
    try:
        stats = os.statvfs(folder)
    except OSError:
        return None
    if stats.f_flag & os.ST_RDONLY:
        return _REASONS[errno.EROFS]
    if stats.f_bavail * stats.f_frsize < NEARLY_FULL_BYTES:
        return _REASONS[errno.ENOSPC]
    return None


def disk_write_error(error: BaseException, path: str, advice: str = "") -> DiskWriteError | None:
    """A :class:`DiskWriteError` for ``error`` while writing ``path``, or None if the disk is not the cause."""
    if isinstance(error, DiskWriteError):
        return error
    reason = disk_problem(error, path)
    return None if reason is None else DiskWriteError(path, reason, advice)


def remove_quietly(path: str) -> None:
    """Delete a temporary file if it exists; a folder that went read-only or vanished is no new error."""
    try:
        os.remove(path)
    except OSError:  # gone already, or the disk went read-only: the original error matters more
        pass
