"""Capture stage: reads a source and sends frames on, ending with end-of-stream.

Settings: ``source`` (URI), ``source_id``, ``max_frames`` (0 = all), ``pace`` (follow the
source's frame rate; on for live flow over a file, so a file can stand in for a camera).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from segstream.pipeline.messages import Header, Kind, Message, eos
from segstream.pipeline.sources import SourceError, SourceFrame, open_source, to_bgr
from segstream.pipeline.stage import EOS_LINGER_MS, StageRuntime, StageSpec, close_writer, open_outbox, open_writer, stamp

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaptureSettings:
    """Capture stage settings."""

    source: str
    source_id: str
    max_frames: int = 0
    pace: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CaptureSettings":
        return cls(**data)


def _usable_image(frame: SourceFrame, source_id: str, skipped: Counter[str]) -> np.ndarray | None:
    """The frame as BGR uint8, or None (counted and logged) if it cannot be used."""
    if frame.image is None:
        skipped["unreadable"] += 1
        logger.warning("%s: skipped frame %s: %s", source_id, frame.name, frame.error)
        return None
    try:
        return to_bgr(frame.image)
    except ValueError as exc:
        skipped["bad_format"] += 1
        logger.warning("%s: skipped frame %s: %s", source_id, frame.name, exc)
        return None


def run(spec: StageSpec, runtime: StageRuntime) -> int:
    """Read frames until the source ends, ``max_frames`` or a stop; always send EOS."""
    settings = CaptureSettings.from_dict(spec.settings)
    stats = runtime.stats
    try:
        source = open_source(settings.source, settings.source_id)
    except SourceError as exc:
        logger.error("%s", exc)
        runtime.emit("error", message=str(exc))
        return 2
    outbox = open_outbox(spec, runtime)
    if outbox is None:
        raise ValueError("capture needs an output endpoint")
    writer = open_writer(spec)
    stats.extra.update({"source": settings.source, "fps": source.fps, "frame_count": getattr(source, "frame_count", 0)})
    sent_eos = False
    try:
        if not runtime.ready_and_wait_for_start():
            return 0
        start = time.monotonic()
        index = 0
        seq = 0  # frames handed to the pipeline; lets a later stage restore their order
        frames = source.frames()
        while not runtime.stopping:
            if settings.pace and source.fps > 0 and not source.live:
                delay = start + index / source.fps - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            read_ns = time.monotonic_ns()
            frame = next(frames, None)
            if frame is None:
                break
            in_ns = time.monotonic_ns()
            stats.frames_in += 1
            this_index = index
            index += 1
            image = _usable_image(frame, settings.source_id, stats.skipped)
            if image is not None:
                header = Header(Kind.FRAME, settings.source_id, this_index, frame.name, in_ns, time.time_ns(),
                                meta={"fps": source.fps, "seq": seq})
                seq += 1
                message = Message(header)
                blocked_before = writer.blocked_ns
                if not writer.add(message, "frame", image, lambda: runtime.stopping):
                    break
                stamp(message, spec.name, in_ns)
                stats.record_timing(read_ns, message.header.stamps[-1].out_ns, writer.blocked_ns - blocked_before)
                if outbox.send(message):
                    stats.record_out(settings.source_id, time.monotonic_ns())
            if settings.max_frames and index >= settings.max_frames:
                break
            runtime.tick()
        if not runtime.stopping:
            logger.info("%s: end of stream after %d frames", settings.source_id, stats.frames_in)
            sent_eos = outbox.send(eos(settings.source_id, frames_in=stats.frames_in, frames_out=stats.frames_out,
                                       skipped=dict(stats.skipped)))
            runtime.wait_until_downstream_done()
        return 0
    finally:
        source.close()
        if not sent_eos and not runtime.stopping:
            logger.warning("%s: end-of-stream could not be delivered", spec.name)
        outbox.close(0 if runtime.stopping else EOS_LINGER_MS)
        close_writer(writer, runtime)
