"""Frames put back in capture order after parallel workers (``Reorderer``)."""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Callable

from segstream.pipeline.telemetry.stats import SkipCounter
from segstream.pipeline.wire.choices import FlowPolicy
from segstream.pipeline.wire.messages import Message

logger = logging.getLogger(__name__)

RESYNC_PENDING = 4  # frames a reorderer waits with after a worker restart (its ring has 8 slots)
RESYNC_PATIENCE = 8  # after a restart, a gap is given up when no frame came for this many frame gaps
RESYNC_PATIENCE_MIN_S = 2.0  # and at least this long


class Reorderer:
    """Puts frames that arrive from parallel workers back in capture order.

    Frames carry ``meta["seq"]``, a per-source count of frames sent by capture. Lossless:
    frames wait until their predecessors arrived (a gap left by a frame lost upstream is
    given up at end of stream or when ``max_pending`` frames wait, counted as ``lost``;
    after a restart's ``resync`` not counted here: the restart's accounting has them).
    Live: a frame older than one already passed on is dropped as ``late``.

    ``restarted``: this is a restarted process of its stage. Its predecessor passed on the
    frames before the ones it gets, so each source starts at the first frame that comes
    (not at 0, which would wait forever for frames long gone), and it is resynced.
    """

    def __init__(self, policy: FlowPolicy, skipped: SkipCounter, max_pending: int = 64,
                 clock_ns: Callable[[], int] = time.monotonic_ns, restarted: bool = False) -> None:
        self.policy = policy
        self.skipped = skipped
        self.max_pending = max_pending
        self._next: dict[str, int] = {}
        self._pending: dict[str, dict[int, Message]] = {}
        self._restarted = restarted
        self._resynced = restarted
        self._clock_ns = clock_ns
        self._last_ns: int | None = None  # when the last frame came
        self._gaps_ns: deque[int] = deque(maxlen=16)  # the time between frames, lately

    def push(self, message: Message) -> list[Message]:
        """Messages now ready, in order."""
        source = message.header.source
        seq = int(message.header.meta.get("seq", -1))
        if seq < 0:
            return [message]
        now = self._clock_ns()
        if self._last_ns is not None:
            self._gaps_ns.append(now - self._last_ns)
        self._last_ns = now
        if self._restarted and source not in self._next:
            self._next[source] = seq  # where the stream is for this process
        expected = self._next.get(source, 0)
        if self.policy is FlowPolicy.LIVE:
            if seq < expected:
                self.skipped.add("late", source)
                return []
            self._next[source] = seq + 1
            return [message]
        if seq < expected:
            if self._resynced:
                return [message]
            self.skipped.add("duplicate", source)
            return []
        pending = self._pending.setdefault(source, {})
        pending[seq] = message
        ready = self._pop_ready(source)
        if len(pending) > (RESYNC_PENDING if self._resynced else self.max_pending):
            ready += self.flush(source)
        return ready

    def _pop_ready(self, source: str) -> list[Message]:
        pending = self._pending.get(source, {})
        expected = self._next.get(source, 0)
        ready = []
        while expected in pending:
            ready.append(pending.pop(expected))
            expected += 1
        self._next[source] = expected
        return ready

    def resync(self) -> list[Message]:
        """A worker was restarted and the frames it held are gone: give up on every gap
        now, and from now on pass a frame that comes after its successors on (lossless,
        out of order) instead of dropping it, and wait for at most ``RESYNC_PENDING``
        frames. Returns what was waiting, in order."""
        self._resynced = True
        return self._flush_all()

    def expire(self) -> list[Message]:
        """After a restart, what waits behind a gap that nothing will fill: every gap is
        given up once no frame has come for ``RESYNC_PATIENCE`` times the recent time
        between frames (at least ``RESYNC_PATIENCE_MIN_S``). Frames lost in a dead process
        can leave fewer frames waiting than ``RESYNC_PENDING`` while the lossless window
        upstream lets no more in until those frames are released past this stage: without
        this the run would stall. Before any restart nothing expires (a gap is only ever a
        slow worker's frame). Returns what was waiting, in order."""
        if not self._resynced or self._last_ns is None or not any(self._pending.values()):
            return []
        gap = sorted(self._gaps_ns)[len(self._gaps_ns) // 2] if self._gaps_ns else 0
        patience_ns = max(RESYNC_PATIENCE_MIN_S * 1e9, RESYNC_PATIENCE * gap)
        idle_ns = self._clock_ns() - self._last_ns
        if idle_ns < patience_ns:
            return []
        logger.info("gave up the gaps that frames waited behind for %.1f s after a restart", idle_ns / 1e9)
        return self._flush_all()

    def _flush_all(self) -> list[Message]:
        return [m for source in list(self._pending) for m in self.flush(source)]

    def flush(self, source: str) -> list[Message]:
        """Everything waiting for ``source``, in order, giving up on the gaps."""
        pending = self._pending.pop(source, {})
        ready = []
        expected = self._next.get(source, 0)
        for seq in sorted(pending):
            if not self._resynced:
                # After a restart the gaps are frames that died with a process: the
                # restart's own accounting counts them (its ledger, and what is missing at
                # the end), and counting them here too would count them twice.
                self.skipped.add("lost", source, seq - expected)
            ready.append(pending[seq])
            expected = seq + 1
        self._next[source] = expected
        return ready
