"""Cross-stream batching for inference: which frames go into the next batch, and when.

``--batch N`` lets an inference worker run up to N frames of different sources in one
engine call (one accelerator launch instead of N), ``--batch-timeout-ms T`` bounds how
long the first frame of a batch waits for the others.

- Live flow: at most one frame of a source waits (a newer one supersedes it), so a batch
  never holds two frames of one source. When more sources wait than a batch takes, the
  ones served longest ago go first (round robin), so a fast source cannot starve the
  others.
- Lossless flow: frames go in the order they arrived (that is the order of the shared
  ring they lie in, whose slots are released in order); upstream already serves the
  sources fairly (one window shared out evenly, and ZeroMQ's fair queueing).

The default timeout is a third of the fastest source's frame interval (from each frame's
``meta.fps``): a batch never holds a frame back by more than a fraction of the time to
the next one of its source.

    >>> queue = BatchQueue(size=2, timeout_ns=0, live=True)
    >>> queue.add("a", 1, 0), queue.add("a", 2, 0)   # live: frame 2 supersedes frame 1
    (None, 1)
    >>> queue.add("b", 3, 0); [item for item in queue.take(0)]
    [2, 3]
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from typing import Generic, TypeVar

from segstream.pipeline.wire.checks import source_rate

logger = logging.getLogger(__name__)

T = TypeVar("T")

FALLBACK_TIMEOUT_NS = 10_000_000  # no source says its rate (folders, max-rate replays of them)
AUTO_GPU_BATCH = 8
AUTO_REMOTE_BATCH = 4


def auto_batch(requested: int, device: str, sources: int | None) -> int:
    """The batch size of a run: ``requested``, or for 0 (auto) 1 on the CPU, where one
    call per frame costs no more than a batch, on a GPU one frame per source up to
    ``AUTO_GPU_BATCH`` (``sources`` None: they come and go, so the most), and for a remote
    server ``AUTO_REMOTE_BATCH`` requests in flight. A worker never goes above what its
    engine takes."""
    if requested:
        return requested
    if device == "cpu":
        return 1
    if device == "remote":  # a server (Triton): a batch is that many requests in flight, hiding the round trip
        return AUTO_REMOTE_BATCH
    return AUTO_GPU_BATCH if sources is None else max(1, min(sources, AUTO_GPU_BATCH))


class BatchQueue(Generic[T]):
    """Frames waiting for a batch, by source.

    Args:
        size: frames per batch at most.
        timeout_ns: how long the oldest waiting frame may wait for the batch to fill
            (None: a third of the fastest source's frame interval, see ``note_fps``).
        live: at most one frame per source waits, and a batch takes sources round robin.
    """

    def __init__(self, size: int, timeout_ns: int | None, live: bool) -> None:
        if size < 1:
            raise ValueError(f"a batch holds at least one frame, found size {size}")
        self.size = size
        self.live = live
        self._fixed_timeout = timeout_ns
        self._fastest_fps = 0.0
        self._waiting: OrderedDict[str, deque[tuple[T, int]]] = OrderedDict()
        self._arrivals: deque[tuple[str, T]] = deque()  # lossless: arrival order
        self._served: dict[str, int] = {}  # live: source -> the turn its frame was last taken (one order)
        self._turns = 0

    def __len__(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def note_fps(self, fps: object) -> None:
        """A frame's source rate (``meta.fps``); the fastest sets the default timeout."""
        rate = source_rate(fps)
        if rate is not None:
            self._fastest_fps = max(self._fastest_fps, rate)

    @property
    def timeout_ns(self) -> int:
        """How long the oldest waiting frame may wait for the batch to fill."""
        if self._fixed_timeout is not None:
            return self._fixed_timeout
        if self._fastest_fps:
            return int(1e9 / self._fastest_fps / 3)
        return FALLBACK_TIMEOUT_NS

    def add(self, source: str, item: T, now_ns: int) -> T | None:
        """Queue ``item`` of ``source`` (arrived at ``now_ns``); in live flow, returns the
        frame of the same source it supersedes (for the caller to release and count)."""
        queue = self._waiting.setdefault(source, deque())
        superseded = None
        if self.live and queue:
            superseded, _ = queue.popleft()
            self._arrivals = deque((s, i) for s, i in self._arrivals if i is not superseded)
        queue.append((item, now_ns))
        self._arrivals.append((source, item))
        return superseded

    def deadline_ns(self) -> int | None:
        """When the batch goes even if not full (None: nothing waits)."""
        oldest = min((q[0][1] for q in self._waiting.values() if q), default=None)
        return None if oldest is None else oldest + self.timeout_ns

    def ready(self, now_ns: int) -> bool:
        """A batch is due: it is full (live: as many sources wait as a batch takes), or
        its oldest frame waited ``timeout_ns``."""
        if len(self) >= self.size:
            return True
        deadline = self.deadline_ns()
        return deadline is not None and now_ns >= deadline

    def take(self, now_ns: int) -> list[T]:
        """The next batch (up to ``size`` frames), removed from the queue."""
        del now_ns  # the order never depends on the time, only on arrivals and sources
        batch: list[T] = []
        if not self.live:
            while self._arrivals and len(batch) < self.size:
                source, item = self._arrivals.popleft()
                self._waiting[source].popleft()
                batch.append(item)
            self._drop_empty()
            return batch
        # Round robin: the sources served longest ago first (never served: first of all,
        # by how long their frame waited).
        sources = sorted((s for s, q in self._waiting.items() if q),
                         key=lambda s: (self._served.get(s, -1), self._waiting[s][0][1]))
        for source in sources[: self.size]:
            item, _ = self._waiting[source].popleft()
            self._arrivals = deque((s, i) for s, i in self._arrivals if i is not item)
            batch.append(item)
            self._turns += 1
            self._served[source] = self._turns
        self._drop_empty()
        return batch

    def flush(self) -> list[T]:
        """Everything waiting, in arrival order (an end of stream or a stop)."""
        items = [item for _, item in self._arrivals]
        self._arrivals.clear()
        self._waiting.clear()
        return items

    def _drop_empty(self) -> None:
        for source in [s for s, q in self._waiting.items() if not q]:
            del self._waiting[source]
