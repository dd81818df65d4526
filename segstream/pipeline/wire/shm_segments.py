"""POSIX shared-memory segments by name: create or attach and map one, unlink one, check
that /dev/shm has room for one, and sweep the ones a killed stage left behind. The ring on
top of them is ``shm_ring``."""

from __future__ import annotations

import logging
import mmap
import os
from multiprocessing.shared_memory import _posixshmem  # type: ignore[attr-defined]
from pathlib import Path

logger = logging.getLogger(__name__)

SHM_PREFIX = "segstream-"


class Segment:
    """One POSIX shared-memory segment, mapped: ``shm_open`` and ``mmap``, nothing more.

    Not ``multiprocessing.shared_memory.SharedMemory``: that starts a resource-tracker
    process in every process that touches a segment (one more process and ~15 MB per
    stage) and would unlink a segment when a *reader* exits. Lifetime is ours: the writer
    unlinks, the supervisor sweeps. Segments are created 0600 (this user only).

    Args:
        name: the segment's name (no leading slash).
        create: create it (fails if it exists) instead of attaching to it.
        size: its size in bytes when created.
    """

    def __init__(self, name: str, create: bool = False, size: int = 0) -> None:
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = _posixshmem.shm_open("/" + name, flags, mode=0o600)
        try:
            if create:
                os.ftruncate(fd, size)
            else:
                size = os.fstat(fd).st_size
            self._mmap = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.name = name
        self.size = size
        self.buf: memoryview | None = memoryview(self._mmap)

    def close(self) -> None:
        """Unmap (raises BufferError while numpy views of it are alive)."""
        if self.buf is not None:
            self.buf.release()
            self.buf = None
        self._mmap.close()


def unlink_segment(name: str) -> bool:
    """Remove a segment by name; False if it was already gone."""
    try:
        _posixshmem.shm_unlink("/" + name)
        return True
    except FileNotFoundError:
        return False


def check_room(size: int) -> None:
    """Refuse a segment /dev/shm cannot hold: writing past its end would kill the process
    with SIGBUS instead of raising (Docker's default /dev/shm is 64 MB)."""
    try:
        stat = os.statvfs("/dev/shm")
    except OSError:
        return
    free = stat.f_bavail * stat.f_frsize
    if size > free:
        raise MemoryError(
            f"shared memory needs {size / 2**20:.0f} MB for a frame ring but /dev/shm has {free / 2**20:.0f} MB "
            f"free; give the container more (docker run --shm-size=1g) or use --transport tcp (no shared memory)"
        )


def segment_names(prefix: str) -> list[str]:
    """The names of the shared-memory segments starting with ``prefix``, sorted. Only Linux
    lists segments (``/dev/shm``); elsewhere none are found."""
    shm_dir = Path("/dev/shm")
    if not shm_dir.is_dir():
        return []
    return sorted(entry.name for entry in shm_dir.iterdir() if entry.name.startswith(prefix))


def sweep(prefix: str) -> list[str]:
    """Unlink every shared-memory segment whose name starts with ``prefix``.

    Used by the supervisor after the stages ended, to remove what a killed stage left.
    Returns the names removed (none where segments cannot be listed: there the writers'
    own clean-up is relied on).
    """
    return [name for name in segment_names(prefix) if unlink_segment(name)]
