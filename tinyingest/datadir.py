"""One gateway per data dir: an exclusive ``flock`` on ``<data-dir>/lock``.

Two gateways on one data dir would replay, acknowledge and delete each other's spool
segments (and share one chDB directory). ``tinyingest serve`` takes the lock before it
reads or writes anything else in the data dir, and keeps it for its lifetime; under
``--workers`` the supervisor takes it and the forked workers inherit it, so the data dir
stays locked while any of them runs. The kernel drops the lock when the last process
holding it exits, however it exits (``kill -9`` included): a restart never finds a stale
lock. The holder's pid is written into the file, for the error message only.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = "lock"


class DataDirBusy(Exception):
    """Another process holds the data dir, or it cannot be locked at all."""


def lock_data_dir(data_dir: str) -> int:
    """Lock ``data_dir`` (created if missing) for this process and its future children.

    Returns the lock's file descriptor: keep it open as long as the data dir is used.
    Raises :class:`DataDirBusy` at once (never waits) if another process holds it.
    """
    directory = Path(data_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # Not truncated on open: the holder's pid must stay readable for a refused second.
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise DataDirBusy(f"cannot use data dir {directory}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if not isinstance(exc, BlockingIOError):
            os.close(fd)
            raise DataDirBusy(f"cannot lock data dir {directory}: {exc.strerror}") from exc
        try:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        finally:
            os.close(fd)
        by = f" (pid {holder})" if holder.isdigit() else ""
        raise DataDirBusy(
            f"data dir {directory.resolve()} is in use by another tinyingest serve{by}: "
            "one gateway per data dir; stop it first, or pass another --data-dir") from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
