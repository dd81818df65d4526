"""A stage's counters in a small memory-mapped file, so they outlive the stage.

A stage reports its figures once a second; one killed between two reports would take the
frames it counted since with it, and the run's accounting would no longer add up. The
ledger holds the counters that accounting needs, written as they change (a store into a
shared mapping, no system call), and the supervisor reads them after a death. It also
holds where a capture got to, so a restarted capture goes on from there.
"""

from __future__ import annotations

import logging
import mmap
import os
from enum import IntEnum
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


class Entry(IntEnum):
    """The counters of a ledger, by position."""

    FRAMES_IN = 0
    FRAMES_OUT = 1
    SKIPPED = 2
    NEXT_INDEX = 3  # capture: index of the next frame of the source
    NEXT_SEQ = 4  # capture: sequence number of the next frame handed on


_SIZE = len(Entry) * 8


class Ledger:
    """The counters of one stage process, kept in a file the supervisor can read.

    Args:
        path: the file (created, or truncated to zero counters).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, _SIZE)
            self._map = mmap.mmap(fd, _SIZE)
        finally:
            os.close(fd)
        self.values = np.ndarray((len(Entry),), np.int64, self._map)

    def set(self, entry: Entry, value: int) -> None:
        """Store one counter."""
        self.values[entry] = value

    def add(self, entry: Entry, count: int = 1) -> None:
        """Add to one counter."""
        self.values[entry] += count

    def close(self) -> None:
        """Unmap (the file stays for the supervisor)."""
        self.values = None  # type: ignore[assignment]
        try:
            self._map.close()
        except BufferError:
            logger.debug("ledger %s still has views", self.path)


def read_ledger(path: Path) -> dict[Entry, int] | None:
    """The counters a stage left in ``path``; None if there is no complete ledger."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) != _SIZE:
        return None
    values = np.frombuffer(data, np.int64)
    return {entry: max(int(values[entry]), 0) for entry in Entry}
