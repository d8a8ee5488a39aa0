"""One writer per output folder: an exclusive ``flock`` on a lock file, held for the life of a run.

The kernel releases a ``flock`` when its process dies, however it dies (SIGKILL, out of memory), so a
lock can never outlive its holder. The lock file records who holds it (command, pid, host, start
time) for the refusal message. A normal exit deletes the file; a killed process leaves it behind
unlocked, and the next run reports that stale lock and takes it over.

Deleting the file while other processes may open it is safe because :func:`acquire` checks, once it
holds the lock, that the file it locked is still the one at the path (else it retries).
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket

from nnunet_voco.storage.disk_errors import DiskWriteError, disk_problem

_HELD: dict[str, "FolderLock"] = {}  # lock path -> lock held by this process


class FolderBusy(ValueError):
    """Another process holds the lock (commands print the message and exit with code 2)."""


class FolderLock:
    """An acquired lock; :meth:`release` (idempotent) unlocks it and deletes the lock file.

    Attributes:
        path: the lock file.
        stale: description of a lock left by a process that died, taken over by this one (or None).
    """

    def __init__(self, path: str, fd: int, stale: str | None, created_folder: str | None):
        self.path, self.stale = path, stale
        self._fd, self._created_folder = fd, created_folder

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.remove(self.path)  # while still locked: a process waiting on this file then retries
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None
        _HELD.pop(self.path, None)
        if self._created_folder:
            try:
                os.rmdir(self._created_folder)  # only if the run left it empty
            except OSError:
                pass


def acquire(path: str, command: str, folder_label: str | None = None) -> FolderLock:
    """Lock ``path`` (created with its folder if needed) for this process.

    Args:
        path: the lock file, e.g. ``<output folder>/.voco.lock``.
        command: recorded in the file and shown to a second run, e.g. ``"voco_pretrain"``.
        folder_label: what the lock protects, for messages (default: the lock file's folder).

    Returns:
        The :class:`FolderLock`; check its ``stale`` attribute and report it.

    Raises:
        FolderBusy: a living process holds the lock (one line naming it).
        DiskWriteError: the lock file cannot be created (read-only, full or vanished disk).
    """
    label = folder_label or os.path.dirname(os.path.abspath(path))
    if path in _HELD:  # an earlier run in this process ended by an exception its caller swallowed
        _HELD[path].release()
    folder = os.path.dirname(os.path.abspath(path))
    created = None if os.path.isdir(folder) else folder
    while True:
        try:
            os.makedirs(folder, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise DiskWriteError(path, disk_problem(e, path) or e.strerror or str(e),
                                 f"{label} must be writable; pass -o for another folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _describe(_read(fd))
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise FolderBusy(f"{label} is in use by {holder}; only one run may write a folder at a time: wait for "
                             f"it to end (or stop it), or choose another output folder") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder deleted the file between our open and our lock: lock the new one
            os.close(fd)
            continue
        previous = _read(fd)
        stale = None
        if previous is not None:  # written by a holder that never released it: that process died
            stale = (f"{label} had a stale lock of {_describe(previous)}, whose process is gone (killed?); "
                     f"taking the folder over")
        record = {"command": command, "pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.datetime.now().isoformat(timespec="seconds")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        except OSError as e:  # a full disk: the lock itself still holds, only the note is missing
            if disk_problem(e, path) is None:
                os.close(fd)
                raise
        lock = FolderLock(path, fd, stale, created)
        _HELD[path] = lock
        return lock


def release_all() -> None:
    """Release every lock this process still holds (the commands call it on their way out)."""
    for lock in list(_HELD.values()):
        lock.release()


def _read(fd: int) -> dict | None:
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return {}


def _describe(record: dict | None) -> str:
    if not record:
        return "another process (it has not recorded itself yet)"
    return (f"{record.get('command', 'a process')} (pid {record.get('pid', '?')} on host {record.get('host', '?')}, "
            f"started {record.get('started', '?')})")
