"""The supervisor's book of a run's sources: which capture reads each, and its state.

A source is ``connecting`` until its capture delivers (a stream: until it opens),
``running``, ``reconnecting`` while a stream that was open is being reopened, ``ended``
once its end of stream went through every stage (its records are complete), or
``failed`` with the error its capture reported. Ids are unique for the whole run: an id
stays with its figures in stats.json and its records in ``--record DIR/<id>/`` after the
source ended or was removed, so it is never given to another source. The book keeps the
sources running and the last ``KEEP_ENDED_SOURCES`` that ended (``source_release``).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from segstream.pipeline.stage_process import StageProcess
from segstream.pipeline.telemetry.stats import KEEP_ENDED_SOURCES
from segstream.pipeline.wire.names import MAX_NAME, is_safe_name, unique_name

logger = logging.getLogger(__name__)


class SourceState(str, Enum):
    """Where a source is in its life."""

    CONNECTING = "connecting"
    RUNNING = "running"
    RECONNECTING = "reconnecting"
    ENDED = "ended"
    FAILED = "failed"


@dataclass
class SourceEntry:
    """One source of the run.

    Attributes:
        source_id: its id (the topic of its masks, its records' folder).
        uri: what its capture reads.
        stage: the name of its capture stage.
        added_wall: when it joined (Unix time).
        removed: a request removed it (its capture ends the stream).
        removed_at: when (monotonic), for the bound on how long its capture may take.
        ended_at: the stages its end of stream went through.
        connect: added while running: per stage, the endpoints its input connects to.
        joined: added while running: the stages that said they take it.
    """

    source_id: str
    uri: str
    stage: str
    added_wall: float = field(default_factory=time.time)
    removed: bool = False
    removed_at: float = 0.0
    ended_at: set[str] = field(default_factory=set)
    connect: dict[str, tuple[str, ...]] = field(default_factory=dict)
    joined: set[str] | None = None


class IdTaken(ValueError):
    """The id is, or was, another source's in this run."""


class SourceBook:
    """The sources of one run, in the order they joined."""

    def __init__(self) -> None:
        self.entries: dict[str, SourceEntry] = {}  # the sources running, and the last ones that ended
        self.added = 0  # sources ever booked: the next capture stage is ``capture-<added>``
        self._taken: set[str] = set()  # every id the run gave, also of sources no longer in the book
        self._released: deque[str] = deque()

    def add(self, entry: SourceEntry) -> None:
        """Book a new source (its id checked with ``check_id`` first)."""
        self.entries[entry.source_id] = entry
        self._taken.add(entry.source_id)
        self.added += 1

    def release(self, source_id: str) -> list[str]:
        """The source ended and its capture was released: it stays in the book while it is
        one of the last ``KEEP_ENDED_SOURCES`` released; returns the ids that left the book."""
        self._released.append(source_id)
        dropped = []
        while len(self._released) > KEEP_ENDED_SOURCES:
            old = self._released.popleft()
            self.entries.pop(old, None)
            dropped.append(old)
        return dropped

    def note(self, source_id: str, stage: str, ended: bool) -> None:
        """``stage`` passed the source's end of stream on (``ended``), or takes the source
        that joined."""
        entry = self.entries.get(source_id)
        if entry is not None and ended:
            entry.ended_at.add(stage)
        elif entry is not None and entry.joined is not None:
            entry.joined.add(stage)

    def was_booked(self, source_id: str) -> bool:
        """Whether the run ever had a source with this id (in the book now or not)."""
        return source_id in self._taken

    def get(self, source_id: str) -> SourceEntry | None:
        """The source with that id, if the run has one."""
        return self.entries.get(source_id)

    def check_id(self, source_id: object) -> str:
        """``source_id`` if a new source may take it.

        Raises:
            ValueError: not a safe name (ids become folder names).
            IdTaken: another source of this run has or had it.
        """
        if not is_safe_name(source_id):
            raise ValueError(f"id must be 1-{MAX_NAME} letters, digits or '_ . + = @ -', starting with a letter, "
                             f"digit or '_' and without '..' (it names the source's records folder), found "
                             f"{str(source_id)[:80]!r}")
        assert isinstance(source_id, str)
        entry = self.entries.get(source_id)
        if entry is not None:
            when = "is in use" if not self.ended(entry) else "was used by a source that ended; its figures and records keep it"
            raise IdTaken(f"id {source_id!r} {when} ({entry.uri}); choose another id")
        if source_id in self._taken:
            raise IdTaken(f"id {source_id!r} was used by a source that ended; its records keep it; choose another id")
        return source_id

    def new_id(self, base: str) -> str:
        """``base``, or ``base-1``, ``base-2``... whichever no source of the run has had."""
        return unique_name(base, self._taken)

    def ended(self, entry: SourceEntry, stages: tuple[str, ...] = ()) -> bool:
        """True once the source's end of stream went through every stage of ``stages``
        (every non-capture stage of the run; with none given, through at least one)."""
        if not entry.ended_at:
            return False
        return set(stages) <= entry.ended_at


def source_state(entry: SourceEntry, capture: StageProcess | None, failed: dict[str, str],
                 through_all: bool) -> SourceState:
    """The state of ``entry``, from its capture's report and what the supervisor saw.

    Args:
        entry: the source.
        capture: its capture stage (None: not started yet).
        failed: source id -> error, for the sources whose capture reported a failure.
        through_all: its end of stream went through every stage.
    """
    if entry.source_id in failed:
        return SourceState.FAILED
    # Ended once its end of stream went through every stage and its capture said it sent it
    # (that event follows the capture's final figures on the same channel), or exited.
    captured_end = capture is None or capture.ended or capture.process.poll() is not None
    if (through_all and captured_end) or (capture is not None and capture.process.poll() == 0):
        return SourceState.ENDED
    if capture is None or not capture.started or capture.report is None:
        return SourceState.CONNECTING
    extra = capture.report.extra
    if extra.get("opened") and not extra.get("streaming") and not capture.ended:
        return SourceState.RECONNECTING
    if capture.report.frames_in == 0 and not extra.get("streaming") and not capture.ended:
        return SourceState.CONNECTING
    return SourceState.RUNNING


def source_view(entry: SourceEntry, state: SourceState, figures: dict[str, Any], error: str) -> dict[str, Any]:
    """What the API shows of a source: its state and figures (``figures``: its
    ``per_source`` entry of the stats)."""
    skipped = sum(figures.get("skipped_at_capture", {}).values()) + sum(
        sum(reasons.values()) for reasons in figures.get("skipped_by_stage", {}).values())
    latency = figures.get("latency_ms", {})
    return {
        "id": entry.source_id,
        "uri": entry.uri,
        "state": state.value,
        "error": error,
        "removed": entry.removed,
        "added": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(entry.added_wall)),
        "frames_in": int(figures.get("frames_in", 0)),
        "frames_published": int(figures.get("frames_published", 0)),
        "frames_skipped": int(skipped),
        "fps": float(figures.get("throughput_fps", 0.0)),
        "latency_ms": {"p50": float(latency.get("median", 0.0)), "p95": float(latency.get("p95", 0.0))},
        "reconnects": int(figures.get("reconnects", 0)),
        "capture_stage": entry.stage,
    }
