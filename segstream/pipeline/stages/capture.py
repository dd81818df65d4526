"""Capture stage: reads a source and sends frames on, ending with end-of-stream.

Settings: ``spec.CaptureSettings``.

Paced replays read (decode) each frame first and then wait for its scheduled time, so a
frame leaves on schedule; its capture timestamp is the scheduled time, so latency figures
stay honest when the pipeline falls behind.

A replay at ``--rate max`` has no clock of its own: its frame is captured when the
pipeline takes it in, that is once it is in the ring. A source that decodes straight into
the ring (video files, the test pattern: ``sources/base.py:decode_target``) waits for the
free slot first and then decodes into it; any other source's frame is decoded first and
waits for its slot after. Either way the wait is not latency. A live source's frame
(camera, stream) keeps the time it was read: its wait for a slot is latency.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any, Callable, Iterator

import numpy as np

from segstream.errors import SourceError
from segstream.pipeline.control import EventKind
from segstream.pipeline.expect import FULL_SIZE_KEY
from segstream.pipeline.loop import EOS_LINGER_MS, open_outbox, open_writer, stamp
from segstream.pipeline.runtime import StageRuntime
from segstream.pipeline.sources import FrameSource, SourceFrame, open_source, to_bgr
from segstream.pipeline.spec import CaptureSettings, StageSpec
from segstream.pipeline.telemetry.ledger import Entry
from segstream.pipeline.telemetry.stats import StageStats
from segstream.pipeline.wire.messages import Header, Kind, Message, eos
from segstream.pipeline.wire.names import sanitize_name
from segstream.pipeline.wire.payloads import PayloadWriter
from segstream.pipeline.wire.policies import Outbox

logger = logging.getLogger(__name__)

Schedule = Callable[[int, SourceFrame], "float | None"]


def make_schedule(rate: str, source: FrameSource) -> Schedule | None:
    """When each frame is due, in seconds from the first; None for no pacing.

    Streams and cameras pace themselves. ``native`` follows the frames' own timestamps,
    else the source's nominal rate (a folder without one is not paced); ``N`` is a fixed
    rate.
    """
    if source.self_paced or rate == "max":
        return None
    if rate == "native":
        fps = source.fps

        def native(index: int, frame: SourceFrame) -> float | None:
            if frame.time_s is not None:
                return frame.time_s
            return index / fps if fps > 0 else None

        return native
    period = 1.0 / float(rate)
    return lambda index, frame: index * period


_END = object()


def _note_connection(source: FrameSource, stats: StageStats) -> None:
    """Copy a live source's connection counters into the stage stats."""
    figures = source.connection()
    stats.reconnects = figures.get("reconnects", 0)
    stats.connect_attempts = figures.get("connect_attempts", 0)
    for key in ("stalls", "frames_missing", "streaming", "opened"):  # a stream's state; a video file cut short
        if key in figures:
            stats.extra[key] = figures[key]


def _usable_image(frame: SourceFrame, source_id: str) -> tuple[np.ndarray | None, str]:
    """The frame as BGR uint8, or None and the reason it cannot be used (logged)."""
    if frame.image is None:
        logger.warning("%s: skipped frame %s: %s", source_id, frame.name, frame.error)
        return None, "unreadable"
    try:
        return to_bgr(frame.image), ""
    except ValueError as exc:
        logger.warning("%s: skipped frame %s: %s", source_id, frame.name, exc)
        return None, "bad_format"


def _wait_until(deadline_ns: int, stopping: Callable[[], bool]) -> None:
    """Sleep until ``deadline_ns`` (monotonic), in slices short enough to notice a stop.

    No spinning at the end: the kernel's timers wake a sleeper within ~0.1 ms here, and a
    spin would take that CPU from inference, which runs on the same cores."""
    while True:
        remaining = deadline_ns - time.monotonic_ns()
        if remaining <= 0 or stopping():
            return
        time.sleep(min(remaining, 50_000_000) / 1e9)


def _stream(source: FrameSource, settings: CaptureSettings, spec: StageSpec, runtime: StageRuntime,
            outbox: Outbox, writer: PayloadWriter) -> None:
    """Read, pace and send frames until the source ends, ``max_frames`` or a stop.

    Raises:
        SourceError: a live source that never opened.
    """
    stats = runtime.stats
    schedule = make_schedule(settings.rate, source)
    start_ns, start_wall_ns = time.monotonic_ns(), time.time_ns()
    index = settings.start_index
    seq = settings.start_seq  # frames handed to the pipeline; lets a later stage restore their order
    if settings.max_frames and index >= settings.max_frames:
        return
    if hasattr(source, "buffers"):  # it can decode straight into the ring's next slot
        source.buffers = lambda shape: writer.reserve(shape, np.uint8, lambda: runtime.ending)
    frames = source.frames()
    if index and not source.live:
        _skip_to(frames, index, runtime)
        if schedule is not None:  # the resumed replay keeps its pace from here
            first = next(frames, _END)
            if first is _END:
                return
            due = schedule(index, first) or 0.0  # type: ignore[arg-type]
            start_ns -= int(due * 1e9)
            start_wall_ns -= int(due * 1e9)
            frames = itertools.chain([first], frames)  # type: ignore[assignment]
    while not runtime.ending:
        read_ns = time.monotonic_ns()
        blocked_before = writer.blocked_ns  # a source decoding into the ring waits for its slot first
        frame = next(frames, _END)
        decoded_ns = time.monotonic_ns()
        if frame is _END:
            break
        if frame is None:  # a live source with nothing new yet
            _note_connection(source, stats)
            runtime.tick()
            continue
        due = schedule(index, frame) if schedule else None
        if due is not None:
            _wait_until(start_ns + int(due * 1e9), lambda: runtime.ending)
        in_ns = time.monotonic_ns()
        capture_ns, wall_ns = in_ns, time.time_ns()
        if due is not None:
            capture_ns, wall_ns = start_ns + int(due * 1e9), start_wall_ns + int(due * 1e9)
            stats.pacing_error_ms.append(abs(in_ns - capture_ns) / 1e6)
        this_index = index
        index += 1
        image, unusable = _usable_image(frame, settings.source_id)
        # Noted before the frame is counted and leaves: a restart after a death here
        # leaves a gap (counted as lost), never a duplicate.
        _note_position(runtime, index, seq + (image is not None))
        stats.count_in()
        if unusable:
            stats.skipped.add(unusable, settings.source_id)
        if image is not None:
            meta: dict[str, Any] = {"fps": source.fps, "seq": seq}
            if frame.gt is not None:
                meta["gt_kind"] = source.gt_kind
            if frame.full_size is not None:  # decoded reduced: the mask goes out at this size
                meta[FULL_SIZE_KEY] = list(frame.full_size)
                stats.extra["decoded_reduced"] = stats.extra.get("decoded_reduced", 0) + 1
            message = Message(Header(Kind.FRAME, settings.source_id, this_index, sanitize_name(frame.name),
                                     capture_ns, wall_ns, meta=meta))
            seq += 1
            if not writer.add(message, "frame", image, lambda: runtime.ending):
                break
            stats.extra["decoded_into_ring"] = writer.in_place  # frames never copied on their way out
            if due is None and not source.live:  # a max-rate replay: taken in now
                message.header.capture_ns, message.header.wall_ns = time.monotonic_ns(), time.time_ns()
            if frame.gt is not None:
                writer.add(message, "gt", frame.gt, inline=True)
            if frame.gt_instances is not None:
                writer.add(message, "gt_instances", frame.gt_instances, inline=True)
            stamp(message, spec.name, in_ns)
            # own work: decoding plus handing over, not the waits for the time slot and
            # for a free ring slot
            stats.record_timing(in_ns - (decoded_ns - read_ns), message.header.stamps[-1].out_ns,
                                writer.blocked_ns - blocked_before)
            stats.leaving()
            if outbox.send(message):
                stats.record_out(settings.source_id, time.monotonic_ns())
            else:
                stats.stayed()
        if settings.max_frames and index >= settings.max_frames:
            break
        runtime.tick()


def _note_position(runtime: StageRuntime, index: int, seq: int) -> None:
    """Keep where the capture got to in its ledger (a restart goes on from there)."""
    if runtime.ledger is not None:
        runtime.ledger.set(Entry.NEXT_INDEX, index)
        runtime.ledger.set(Entry.NEXT_SEQ, seq)


def _skip_to(frames: Iterator[SourceFrame | None], index: int, runtime: StageRuntime) -> None:
    """Read past the first ``index`` frames of a replay (a restarted capture)."""
    for _ in range(index):
        if runtime.stopping or next(frames, _END) is _END:
            return
    logger.info("resumed at frame %d", index)


class _Removed(Exception):
    """The source was removed before this process could open it."""


def run(spec: StageSpec, runtime: StageRuntime) -> int:
    """Capture one source until it ends, ``max_frames``, ``end_source`` (the source was
    removed from the run: it ends as if the source had) or a stop; always send EOS.

    A source that cannot be opened (or a stream that never opens) ends with an
    end-of-stream message that carries the error, and a ``source_failed`` event, so the
    other sources of the run carry on.
    """
    settings = spec.settings
    assert isinstance(settings, CaptureSettings)  # StageSpec checks the kind's settings type
    stats = runtime.stats
    outbox = open_outbox(spec, runtime)
    if outbox is None:
        raise ValueError("capture needs an output endpoint")
    writer = open_writer(spec)
    source: FrameSource | None = None
    failure = settings.failed  # given up on after it kept dying: end its stream, open nothing
    try:
        if failure:
            raise SourceError(failure)
        if settings.removed:  # its process before could not be told: nothing to open, only the end
            raise _Removed
        source = open_source(settings.source, settings.source_id, loop=settings.loop,
                             live_options=settings.live)
        if settings.instance_gt and hasattr(source, "instance_gt"):  # dataset replays that have it
            source.instance_gt = True
        if settings.reduce_to is not None and hasattr(source, "reduce_to"):  # image files
            source.reduce_to = settings.reduce_to
        stats.frame_count = source.frame_count
        stats.extra.update({"source": settings.source, "fps": source.fps, "rate": settings.rate})
    except SourceError as exc:
        failure = str(exc)
    except _Removed:
        pass
    try:
        if not runtime.ready_and_wait_for_start():
            return 0
        if source is not None:
            try:
                _stream(source, settings, spec, runtime, outbox, writer)
            except SourceError as exc:
                failure = str(exc)
            _note_connection(source, stats)
        if failure:
            logger.error("%s", failure)
            stats.error = failure
            runtime.emit(EventKind.SOURCE_FAILED, source=settings.source_id, message=failure)
        if not runtime.stopping:
            logger.info("%s: end of stream after %d frames", settings.source_id, stats.frames_in)
            runtime.tick(now_too=True)  # the final figures, ahead of the end of stream and of "ended"
            extra: dict[str, Any] = {"error": failure} if failure else {}
            if runtime.ending or settings.removed:  # removed from the run (end_source), not ended by itself
                extra["removed"] = True
            outbox.send(eos(settings.source_id, frames_in=stats.frames_in, frames_out=stats.frames_out,
                            skipped=dict(stats.skipped), **extra))
            runtime.wait_until_downstream_done()
        return 0
    finally:
        if source is not None:
            source.close()
        outbox.close(0 if runtime.stopping else EOS_LINGER_MS)
        writer.close(unlink=True)
