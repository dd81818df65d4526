"""Pushing the overlay to an RTSP server as H.264, through Debian's ``ffmpeg``.

The render stage writes raw BGR frames to an ``ffmpeg`` child process, which encodes
them with libx264 (ultrafast, zero-latency tuning) and publishes them with RTSP ANNOUNCE/
RECORD to ``rtsp://HOST:PORT/PATH`` (a server such as MediaMTX, GStreamer's RTSP server
in record mode, or ``ffmpeg -rtsp_flags listen``).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from typing import Any

import cv2
import numpy as np

from segstream.errors import OutputError
from segstream.pipeline.sinks import BaseSink, SinkContext, SinkResult

DEFAULT_FPS = 25.0

logger = logging.getLogger(__name__)


class RtspPublisher:
    """Encodes frames to H.264 and pushes them to an RTSP server.

    Args:
        url: ``rtsp://HOST:PORT/PATH``.
        width: frame width (frames of another size must be resized by the caller).
        height: frame height.
        fps: frame rate announced to the server.
    """

    def __init__(self, url: str, width: int, height: int, fps: float) -> None:
        ffmpeg = shutil.which("ffmpeg")
        if ffmpeg is None:
            raise OutputError("--rtsp-out needs the ffmpeg program with libx264 (Debian: apt-get install ffmpeg)")
        if not url.startswith("rtsp://"):
            raise OutputError(f"--rtsp-out takes rtsp://HOST:PORT/PATH, found {url!r}")
        self.url = url
        self.size = (width, height)
        command = [ffmpeg, "-hide_banner", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "bgr24",
                   "-s", f"{width}x{height}", "-r", f"{fps:g}", "-i", "-", "-an", "-c:v", "libx264",
                   "-preset", "ultrafast", "-tune", "zerolatency", "-pix_fmt", "yuv420p", "-g", str(max(int(fps), 1)),
                   "-f", "rtsp", "-rtsp_transport", "tcp", url]
        self._proc = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        logger.info("pushing the overlay to %s", url)

    def write(self, image: np.ndarray) -> None:
        """Send one frame (BGR, of the size given at start)."""
        if self._proc.poll() is not None:
            error = self._proc.stderr.read().decode(errors="replace").strip() if self._proc.stderr else ""
            raise OutputError(f"ffmpeg pushing to {self.url} exited ({error or self._proc.returncode}); check that "
                               f"an RTSP server accepts publishing there")
        try:
            self._proc.stdin.write(np.ascontiguousarray(image).tobytes())
        except BrokenPipeError:
            raise OutputError(f"ffmpeg pushing to {self.url} stopped reading; the server went away") from None

    def close(self, timeout_s: float = 2.0) -> None:
        """Finish the stream (ffmpeg flushes and sends TEARDOWN), killing it after ``timeout_s``."""
        if self._proc.stdin and not self._proc.stdin.closed:
            try:
                self._proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


class RtspOut(BaseSink):
    """``rtsp://HOST:PORT/PATH``: the overlay pushed as H.264; with several sources, one path
    per source (``URL/<source id>``)."""

    def __init__(self, url: str, context: SinkContext) -> None:
        if not url.startswith("rtsp://"):
            raise OutputError(f"--rtsp-out takes rtsp://HOST:PORT/PATH, found {url!r}")
        self.url = url
        self.several = context.sources > 1 or context.per_source_dirs  # per_source_dirs: sources come and go
        self.publishers: dict[str, RtspPublisher] = {}
        self.frames = 0

    def write(self, result: SinkResult) -> None:
        image = result.image
        if image is None:
            return
        source = result.header.source
        publisher = self.publishers.get(source)
        if publisher is None:
            url = f"{self.url.rstrip('/')}/{source}" if self.several else self.url
            fps = float(result.header.meta.get("fps") or DEFAULT_FPS)
            publisher = self.publishers[source] = RtspPublisher(url, image.shape[1], image.shape[0], fps)
        if (image.shape[1], image.shape[0]) != publisher.size:
            image = cv2.resize(image, publisher.size, interpolation=cv2.INTER_AREA)
        publisher.write(image)
        self.frames += 1

    def end_source(self, final: SinkResult) -> None:
        publisher = self.publishers.pop(final.header.source, None)
        if publisher is not None:
            publisher.close()

    def close(self) -> None:
        for publisher in self.publishers.values():
            publisher.close(timeout_s=0.5)
        self.publishers.clear()

    def figures(self) -> dict[str, Any]:
        return {"frames": self.frames, "url": self.url}
