"""Render stage: frame + mask -> overlay image, handed to the render-side sinks (overlay
video, live view, RTSP out, window).

Settings: ``spec.RenderSettings``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from segstream.pipeline.expect import IMAGE, INSTANCE_IDS, LABELS, part_problem
from segstream.pipeline.loop import open_sinks, run_middle_stage
from segstream.pipeline.overlay import COUNTS_KEY, OverlayRenderer, OverlayStyle, class_counts, counts_from_meta
from segstream.pipeline.runtime import StageRuntime
from segstream.pipeline.sinks import SinkResult
from segstream.pipeline.spec import RenderSettings, StageSpec
from segstream.pipeline.telemetry.stats import summarize
from segstream.pipeline.telemetry.timing import frame_timing
from segstream.pipeline.wire.messages import Message, Stamp
from segstream.pipeline.wire.payloads import PayloadReader

logger = logging.getLogger(__name__)

RECENT_FRAMES = 100  # frames behind the live latency figures


class RenderProcessor:
    """Draws overlays and drives the render-side sinks."""

    finishes_frames = False

    def __init__(self, spec: StageSpec, runtime: StageRuntime) -> None:
        settings = spec.settings
        assert isinstance(settings, RenderSettings)  # StageSpec checks the kind's settings type
        self.spec = spec
        self.runtime = runtime
        meta = settings.metadata
        style = OverlayStyle(opacity=settings.opacity, legend=settings.legend, mode=settings.mode,
                             classes=settings.classes)
        self.renderer = OverlayRenderer(meta.class_names, meta.palette, meta.ignore_index, style)
        self.renderer.warm_up()  # before ready: a live run's first frame would wait ~40 ms for it
        self.frames = PayloadReader(spec.reads.get("frame"))
        self.masks = PayloadReader(spec.reads.get("mask"))
        self.sinks = open_sinks(spec, runtime, settings.sinks, meta, settings.per_source_dirs, self._live_figures,
                                sink_wait_s=settings.sink_wait_s)
        self._last_seen: dict[str, float] = {}
        self._rate: dict[str, float] = {}

    def _live_fps(self, source: str) -> float:
        """Frames per second rendered for ``source``, smoothed."""
        now = time.monotonic()
        last = self._last_seen.get(source)
        self._last_seen[source] = now
        if last is None or now <= last:
            return self._rate.get(source, 0.0)
        instant = 1.0 / (now - last)
        prev = self._rate.get(source)
        self._rate[source] = instant if prev is None else 0.9 * prev + 0.1 * instant
        return self._rate[source]

    def _live_figures(self) -> dict[str, Any]:
        """Latency over the last frames rendered, and the supervisor's pipeline figures."""
        figures = self.runtime.figures
        return {
            "latency_ms": summarize(self.runtime.stats.latency_ms.values()[-RECENT_FRAMES:]),
            "skipped": figures.skipped,
            "stages": figures.stages,
            "miou": figures.miou,
        }

    def process(self, message: Message) -> Message | None:
        started_ns = time.monotonic_ns()
        has_mask = message.header.part("mask") is not None  # a classifier's results have none
        problem = part_problem(message, "frame", IMAGE) or (part_problem(message, "mask", LABELS) if has_mask else None)
        if not problem and has_mask and message.header.part("mask").shape != message.header.part("frame").shape[:2]:
            problem = "parts 'mask' and 'frame' differ in size"
        has_ids = message.header.part("instance_ids") is not None and isinstance(message.header.meta.get("instances"),
                                                                                  list)
        if not problem and has_ids:
            problem = part_problem(message, "instance_ids", INSTANCE_IDS)
            if not problem and message.header.part("instance_ids").shape != message.header.part("frame").shape[:2]:
                problem = "parts 'instance_ids' and 'frame' differ in size"
        if problem:
            self.discard(message)
            self.runtime.refuse(message.header.source, "bad_input", problem)
            return None
        # Frame and mask are read where they lie (no copies); the overlay is a new image.
        header = message.header
        try:
            frame = self.frames.view(message, "frame")
            mask = self.masks.view(message, "mask") if has_mask else None
            image = counts = fps = None
            if frame is not None and (mask is not None or not has_mask):
                counts = np.zeros(1, np.int64) if mask is None else \
                    counts_from_meta(header.meta.get(COUNTS_KEY), mask.size)
                if counts is None:  # publish counted them already; a message without them is counted here
                    counts = class_counts(mask)
                fps = self._live_fps(header.source)
                ids = self.masks.view(message, "instance_ids") if has_ids else None
                image = self.renderer.annotate(frame, mask, header.index, fps, counts,
                                               header.meta.get("classification"),
                                               None if ids is None else (ids, header.meta["instances"]))
                mask = None if mask is None else mask.copy()  # sinks get their own: the slot is released below
            # live flow: a slot reused while it was drawn from makes a torn overlay
            intact = self.frames.intact(message, "frame") and (not has_mask or self.masks.intact(message, "mask")) \
                and (not has_ids or self.masks.intact(message, "instance_ids"))
        finally:
            self.discard(message)
        if image is None or not intact:
            self.runtime.stats.skipped.add("overwritten", message.header.source)
            return None
        self.sinks.write(SinkResult(header, mask, image=image, counts=counts, fps=fps))
        # capture to rendered (recorded, viewed, streamed): the breakdown up to here
        header.stamps.append(Stamp(self.spec.name, started_ns, time.monotonic_ns()))
        self.runtime.stats.record_frame(frame_timing(header, header.stamps[-1].out_ns))
        return message

    def blocked_ns(self) -> int:
        return 0

    def discard(self, message: Message) -> None:
        self.frames.release(message, "frame")
        self.masks.release(message, "mask")
        self.masks.release(message, "instance_ids")

    def end_of_stream(self, message: Message) -> None:
        self.sinks.end_source(SinkResult(message.header))
        self.frames.forget_source(message.header.source)
        self.masks.forget_source(message.header.source)
        self._last_seen.pop(message.header.source, None)
        self._rate.pop(message.header.source, None)

    def close(self) -> None:
        self.sinks.close()
        self.frames.close()
        self.masks.close()


def run(spec: StageSpec, runtime: StageRuntime) -> int:
    """Run the render stage until end of stream or stop."""
    return run_middle_stage(spec, runtime, RenderProcessor(spec, runtime))
