"""``video:DIR``: the overlay as ``DIR[/<source>]/overlay.mp4``, one file per source, closed
at its source's end of stream: H.264 where PyAV has libx264, else mp4v."""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segstream.errors import OutputError
from segstream.pipeline.sinks import BaseSink, SinkContext, SinkResult
from segstream.pipeline.sinks.background import BackgroundWork
from segstream.pipeline.sinks.records import source_dir

logger = logging.getLogger(__name__)

DEFAULT_FPS = 25.0
VIDEO_NAME = "overlay.mp4"


def h264_available() -> bool:
    """True where PyAV (``av``, whose wheels ship FFmpeg with libx264) can encode H.264."""
    try:
        import av
    except ImportError:
        return False
    return "libx264" in av.codecs_available


def _even_size(width: int, height: int) -> tuple[int, int]:
    """H.264 in yuv420p needs even sides of at least 2 pixels."""
    return max(2, width + width % 2), max(2, height + height % 2)


class VideoFile:
    """An mp4 file written frame by frame: H.264 (``avc1``, through PyAV and libx264) where
    that encoder is available, else MPEG-4 Part 2 (``mp4v``, through OpenCV) with a one-line
    notice. Frames of another size are resized to the first; any size is accepted.

    The file is written under a temporary name (``.overlay.mp4.part``) and renamed on
    ``close``, so an ``overlay.mp4`` that exists is complete and plays. H.264 files are
    fragmented MP4 with a key frame every second, so what a killed process left under the
    temporary name plays too, up to its last second: a writer that finds such a file (a
    restarted render) keeps it as ``overlay.salvaged-N.mp4`` before it starts its own.
    """

    notice_given = False

    def __init__(self, path: Path, fps: float) -> None:
        self.path = path
        self.fps = fps if 0 < fps < 1000 else DEFAULT_FPS
        self.frames = 0
        self.codec = "h264" if h264_available() else "mp4v"
        self.partial = path.with_name(f".{path.name}.part")
        self.salvaged = self._salvage()
        self._size: tuple[int, int] | None = None
        self._container: Any = None
        self._stream: Any = None
        self._writer: cv2.VideoWriter | None = None

    def _salvage(self) -> Path | None:
        """Keep what a killed writer of this file left (it plays up to its last fragment)."""
        if not self.partial.is_file() or self.partial.stat().st_size == 0:
            return None
        k = 1
        while (kept := self.path.with_name(f"{self.path.stem}.salvaged-{k}{self.path.suffix}")).exists():
            k += 1
        os.replace(self.partial, kept)
        logger.warning("kept the video a stopped writer left as %s", kept)
        return kept

    def _open(self, image: np.ndarray) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._size = _even_size(image.shape[1], image.shape[0])
        if self.codec == "h264":
            import av

            # fragmented: a file cut short (a killed process) plays up to its last fragment
            self._container = av.open(str(self.partial), "w", format="mp4",
                                      options={"movflags": "frag_keyframe+empty_moov+default_base_moof",
                                               "flush_packets": "1"})
            self._stream = self._container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
            self._stream.width, self._stream.height = self._size
            self._stream.pix_fmt = "yuv420p"
            self._stream.gop_size = max(1, round(self.fps))  # a key frame, so a fragment, every second
            # zerolatency: no lookahead and no B-frames, so nothing waits in the encoder and
            # closing (a stop) does not have to encode a backlog
            # ultrafast: the dash-cam clip at 1080p costs 22 ms of CPU a frame here against
            # superfast's 39 (veryfast: more), for files about 2 % larger at this quality
            self._stream.options = {"preset": "ultrafast", "tune": "zerolatency", "crf": "23"}
            return
        if not VideoFile.notice_given:
            VideoFile.notice_given = True
            logger.warning("no H.264 encoder here (pip install av); overlay videos are MPEG-4 Part 2 (mp4v), which "
                           "browsers do not play")
        self._writer = cv2.VideoWriter(str(self.partial), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self._size)
        if not self._writer.isOpened():
            raise OutputError(f"OpenCV cannot write {self.path} with the mp4v codec")

    def write(self, image: np.ndarray) -> None:
        """Append one frame (BGR uint8)."""
        if self._size is None:
            self._open(image)
        assert self._size is not None
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        if self._stream is not None:
            import av

            # OpenCV converts to the encoder's YUV 4:2:0 in 1.6 ms at 1080p; handing PyAV
            # bgr24 costs 14 ms more (FFmpeg's swscale, on one core)
            frame = av.VideoFrame.from_ndarray(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420), format="yuv420p")
            frame.pts = self.frames
            try:
                self._container.mux(self._stream.encode(frame))
            except (av.FFmpegError, OSError) as exc:
                raise OutputError(f"cannot write {self.path}: {exc}") from None
        elif self._writer is not None:
            self._writer.write(image)
        self.frames += 1

    def close(self) -> None:
        """Finish the file and give it its name."""
        if self._container is not None:
            try:
                self._container.mux(self._stream.encode(None))  # flush the encoder
            finally:
                self._container.close()
                self._container = self._stream = None
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self.partial.exists():
            os.replace(self.partial, self.path)


ENCODER_QUEUE = 8  # overlays that may wait for the encoder thread


class VideoFiles(BaseSink):
    """One ``VideoFile`` per source, encoded on a thread of its own: the stage draws the
    next overlay while this one is converted and encoded. A source's file is complete when
    ``end_source`` returns."""

    def __init__(self, folder: str, context: SinkContext) -> None:
        self.folder = folder
        self.per_source = context.per_source_dirs
        self.files: dict[str, VideoFile] = {}
        self.frames = 0
        # Deep enough for the encoder's start-up (at 1080p: opening it ~90 ms, the first
        # two frames ~110 ms), which would otherwise hold a live render back for ~6 frames.
        self._work = BackgroundWork("video-encoder", depth=ENCODER_QUEUE)

    def write(self, result: SinkResult) -> None:
        if result.image is None:
            return
        source = result.header.source
        path = source_dir(self.folder, source, self.per_source) / VIDEO_NAME
        fps = float(result.header.meta.get("fps") or DEFAULT_FPS)
        self._work.submit(lambda: self._encode(source, path, fps, result.image))

    def _encode(self, source: str, path: Path, fps: float, image: np.ndarray) -> None:
        video = self.files.get(source)
        if video is None:
            video = self.files[source] = VideoFile(path, fps)
        video.write(image)
        self.frames += 1

    def end_source(self, final: SinkResult) -> None:
        source = final.header.source
        self._work.submit(lambda: self._close(source))
        self._work.wait()

    def _close(self, source: str) -> None:
        video = self.files.pop(source, None)
        if video is not None:
            video.close()

    def close(self) -> None:
        try:
            self._work.close()
        finally:
            for video in self.files.values():
                video.close()
            self.files.clear()

    def figures(self) -> dict[str, Any]:
        return {"frames": self.frames, "folder": self.folder}
