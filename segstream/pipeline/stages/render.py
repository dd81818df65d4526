"""Render stage: frame + mask -> overlay video (``--record``).

Settings: ``record`` (folder), ``per_source_dirs``, ``metadata`` (class names, palette),
``opacity``, ``legend``, ``mode`` (blend, mask, side-by-side), ``classes`` (ids to colour),
``view`` (``HOST:PORT`` of the live view in a browser, or None), ``rtsp_out`` (an
``rtsp://`` URL to push the overlay to as H.264), ``display`` (an OpenCV window).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segstream.engines.metadata import ModelMetadata
from segstream.pipeline.messages import Message, Stamp
from segstream.pipeline.overlay import OverlayRenderer, OverlayStyle, class_counts
from segstream.pipeline.payloads import PayloadReader
from segstream.pipeline.records import source_dir
from segstream.pipeline.rtsp_out import RtspOutError, RtspPublisher
from segstream.pipeline.stage import StageRuntime, StageSpec, run_middle_stage
from segstream.pipeline.stats import summarize
from segstream.pipeline.timing import frame_timing
from segstream.pipeline.view import ViewServer

logger = logging.getLogger(__name__)

DEFAULT_FPS = 25.0
VIDEO_NAME = "overlay.mp4"


class VideoSink:
    """An mp4 file written frame by frame; frames of another size are resized to the first."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path = path
        self.fps = fps
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None

    def write(self, image: np.ndarray) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._size = (image.shape[1], image.shape[0])
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self._size)
            if not self._writer.isOpened():
                raise OSError(f"OpenCV cannot write {self.path} with the mp4v codec")
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(image)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None


class RenderProcessor:
    """Draws overlays and writes one video per source."""

    def __init__(self, spec: StageSpec, runtime: StageRuntime) -> None:
        self.spec = spec
        self.runtime = runtime
        settings = spec.settings
        meta = ModelMetadata.from_dict(settings["metadata"])
        classes = settings.get("classes")
        style = OverlayStyle(opacity=float(settings.get("opacity", 0.5)), legend=bool(settings.get("legend", True)),
                             mode=settings.get("mode", "blend"), classes=tuple(classes) if classes else None)
        self.renderer = OverlayRenderer(meta.class_names, meta.palette, meta.ignore_index, style)
        self.record = settings.get("record")
        self.per_source = bool(settings.get("per_source_dirs", False))
        self.frames = PayloadReader(spec.reader_ids.get("frame"))
        self.masks = PayloadReader(spec.reader_ids.get("mask"))
        self.sinks: dict[str, VideoSink] = {}
        self.view = ViewServer(settings["view"]) if settings.get("view") else None
        self.rtsp_out: str | None = settings.get("rtsp_out")
        self.display = bool(settings.get("display", False))
        self.publishers: dict[str, RtspPublisher] = {}
        self._meta = meta
        self._colours = ["#%02x%02x%02x" % (r, g, b) for b, g, r in meta.palette]
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

    def process(self, message: Message) -> Message | None:
        started_ns = time.monotonic_ns()
        frame = self.frames.take(message, "frame")
        has_mask = message.header.part("mask") is not None  # a classifier's results have none
        mask = self.masks.take(message, "mask") if has_mask else None
        if frame is None or (has_mask and mask is None):
            self.runtime.stats.skipped.add("overwritten", message.header.source)
            return None
        header = message.header
        counts = class_counts(mask) if mask is not None else np.zeros(1, np.int64)
        image = self.renderer.annotate(frame, mask, header.index, self._live_fps(header.source), counts,
                                       header.meta.get("classification"))
        if self.record:
            sink = self.sinks.get(header.source)
            if sink is None:
                path = source_dir(self.record, header.source, self.per_source) / VIDEO_NAME
                sink = self.sinks[header.source] = VideoSink(path, float(header.meta.get("fps") or DEFAULT_FPS))
            sink.write(image)
        if self.view is not None:
            self.view.state.publish(image, self._view_figures(message, counts, mask.size if mask is not None else 1))
        if self.rtsp_out:
            self._push(header.source, image, float(header.meta.get("fps") or DEFAULT_FPS))
        if self.display:
            cv2.imshow(f"segstream {header.source}", image)
            cv2.waitKey(1)
        # capture to rendered (recorded, viewed, streamed): the breakdown up to here
        header.stamps.append(Stamp(self.spec.name, started_ns, time.monotonic_ns()))
        self.runtime.stats.record_frame(frame_timing(header, header.stamps[-1].out_ns))
        return message

    def _push(self, source: str, image: np.ndarray, fps: float) -> None:
        """Send the overlay to the RTSP server (one path per source when there are several)."""
        publisher = self.publishers.get(source)
        try:
            if publisher is None:
                url = f"{self.rtsp_out.rstrip('/')}/{source}" if self.spec.sources > 1 else self.rtsp_out
                publisher = self.publishers[source] = RtspPublisher(url, image.shape[1], image.shape[0], fps)
            if (image.shape[1], image.shape[0]) != publisher.size:
                image = cv2.resize(image, publisher.size, interpolation=cv2.INTER_AREA)
            publisher.write(image)
        except RtspOutError as exc:
            logger.error("%s; RTSP output of %s stops here", exc, source)
            self.runtime.stats.extra["rtsp_out_error"] = str(exc)
            self.rtsp_out = None

    def _view_figures(self, message: Message, counts: np.ndarray, pixels: int) -> dict[str, Any]:
        stats = self.runtime.stats
        pipeline = self.runtime.pipeline_stats
        recent = list(stats.latency_ms)[-100:]
        names = self._meta.class_names
        classes = [{"name": names[i], "colour": self._colours[i], "share": round(float(counts[i]) / pixels, 4)}
                   for i in np.argsort(counts)[::-1] if counts[i] and i < len(names)][:12]
        return {
            "fps": round(self._rate.get(message.header.source, 0.0), 2),
            "frame": message.header.index,
            "source": message.header.source,
            "model": self._meta.name,
            "latency_ms": summarize(recent),
            "skipped": pipeline.get("skipped", sum(stats.skipped.values())),
            "stages": pipeline.get("stages", {}),
            "miou": pipeline.get("miou"),
            "classes": classes,
            "classification": message.header.meta.get("classification"),
        }

    def blocked_ns(self) -> int:
        return 0

    def discard(self, message: Message) -> None:
        self.frames.release(message, "frame")
        self.masks.release(message, "mask")

    def end_of_stream(self, message: Message) -> None:
        sink = self.sinks.pop(message.header.source, None)
        if sink is not None:
            sink.close()
        publisher = self.publishers.pop(message.header.source, None)
        if publisher is not None:
            publisher.close()

    def close(self) -> None:
        if self.view is not None:
            self.view.close()
        for publisher in self.publishers.values():
            publisher.close(timeout_s=0.5)
        if self.display:
            cv2.destroyAllWindows()
        for sink in self.sinks.values():
            sink.close()
        self.sinks.clear()
        self.frames.close()
        self.masks.close()


def run(spec: StageSpec, runtime: StageRuntime) -> int:
    """Run the render stage until end of stream or stop."""
    return run_middle_stage(spec, runtime, RenderProcessor(spec, runtime))
