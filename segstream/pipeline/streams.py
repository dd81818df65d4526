"""Live sources: RTSP streams and cameras, read by a thread that keeps only the newest frame.

A reader thread owns the OpenCV capture: it opens it (retrying with capped exponential
backoff), reads continuously, and keeps the newest frame, so the frame handed on is never
one from a growing decoder buffer. A stream that ends, errors or delivers nothing for
``stall_timeout_s`` is reopened (each attempt logged, reconnects counted). A stream that
never opens ends the source with a clear error after ``connect_attempts`` attempts.
``frames()`` yields None while no new frame is there, so the capture stage stays
responsive to a stop in every state, connecting included.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import cv2
import numpy as np

from segstream.pipeline.sources import SourceError, SourceFrame

logger = logging.getLogger(__name__)

WAIT_S = 0.05  # how long frames() waits for a new frame before yielding None
FAILED_READ_S = 0.5  # reads failing for this long (no timeout involved) mean the stream ended


@dataclass(frozen=True)
class LiveOptions:
    """How live sources connect.

    Attributes:
        rtsp_transport: ``tcp`` (default, robust) or ``udp`` (lower latency, lossy).
        open_timeout_s: how long one attempt to open may take.
        stall_timeout_s: a stream that delivers nothing for this long is reopened.
        connect_attempts: attempts before a source that never opened is given up.
        backoff_initial_s: first wait between attempts; doubles each time...
        backoff_max_s: ...up to this.
        width: camera frame width to ask for (0 = the device's default).
        height: camera frame height to ask for.
        fps: camera frame rate to ask for.
    """

    rtsp_transport: str = "tcp"
    open_timeout_s: float = 5.0
    stall_timeout_s: float = 5.0
    connect_attempts: int = 5
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 8.0
    width: int = 0
    height: int = 0
    fps: float = 0.0

    def __post_init__(self) -> None:
        if self.rtsp_transport not in ("tcp", "udp"):
            raise SourceError(f"rtsp_transport must be 'tcp' or 'udp', found {self.rtsp_transport!r}")
        if self.connect_attempts < 1:
            raise SourceError(f"connect_attempts must be at least 1, found {self.connect_attempts}")


class LatestFrameSource:
    """A live source read by a background thread that keeps only the newest frame.

    Args:
        source_id: the source id.
        describe: what to call the source in logs and errors.
        opener: opens a fresh ``cv2.VideoCapture`` (may raise or return a closed one).
        options: connection behaviour.
        reconnect: reopen after the stream ends or stalls (streams); a camera that
            stops is also reopened.
    """

    live = True
    self_paced = True
    gt_kind = ""
    frame_count = 0

    def __init__(self, source_id: str, describe: str, opener: Callable[[], cv2.VideoCapture],
                 options: LiveOptions, reconnect: bool = True) -> None:
        self.source_id = source_id
        self.describe = describe
        self.options = options
        self.fps = 0.0
        self.reconnects = 0
        self.attempts = 0
        self._opener = opener
        self._reconnect = reconnect
        self._lock = threading.Condition()
        self._frame: np.ndarray | None = None
        self._fresh = False
        self._error = ""
        self._ended = False
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"reader-{source_id}", daemon=True)
        self._thread.start()

    # -- reader thread ----------------------------------------------------------------

    def _open(self) -> cv2.VideoCapture | None:
        self.attempts += 1
        try:
            cap = self._opener()
        except cv2.error as exc:
            logger.warning("%s: open attempt %d failed: %s", self.describe, self.attempts, exc)
            return None
        if not cap.isOpened():
            cap.release()
            logger.warning("%s: open attempt %d failed", self.describe, self.attempts)
            return None
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and 0 < fps < 1000 else self.fps
        logger.info("%s: opened (attempt %d)", self.describe, self.attempts)
        return cap

    def _run(self) -> None:
        opened_once = False
        backoff = self.options.backoff_initial_s
        while not self._closing.is_set():
            cap = self._open()
            if cap is None:
                if not opened_once and self.attempts >= self.options.connect_attempts:
                    self._fail(f"could not open {self.describe} after {self.attempts} attempts; check the address "
                               f"and that the server or device is up (attempts: connect_attempts)")
                    return
                self._closing.wait(backoff)
                backoff = min(backoff * 2, self.options.backoff_max_s)
                continue
            if opened_once:
                self.reconnects += 1
            opened_once = True
            backoff = self.options.backoff_initial_s
            self._read_until_failure(cap)
            cap.release()
            if not self._reconnect:
                break
            if not self._closing.is_set():
                logger.warning("%s: stream lost; reconnecting", self.describe)
        with self._lock:
            self._ended = True
            self._lock.notify_all()

    def _read_until_failure(self, cap: cv2.VideoCapture) -> None:
        last_frame = time.monotonic()
        while not self._closing.is_set():
            ok, image = cap.read()
            now = time.monotonic()
            if not ok or image is None:
                # A stall ends at OpenCV's read timeout (= stall_timeout_s); a read that
                # fails at once (end of stream) ends after FAILED_READ_S of failures.
                if not self._reconnect or now - last_frame > min(self.options.stall_timeout_s, FAILED_READ_S):
                    return
                continue
            last_frame = now
            with self._lock:
                self._frame = image
                self._fresh = True
                self._lock.notify_all()

    def _fail(self, message: str) -> None:
        with self._lock:
            self._error = message
            self._ended = True
            self._lock.notify_all()

    # -- FrameSource ------------------------------------------------------------------

    def frames(self) -> Iterator[SourceFrame | None]:
        """The newest frame each time one arrives; None while waiting; ends when the
        source ends for good. Raises SourceError if it never opened."""
        index = 0
        while True:
            with self._lock:
                if not self._fresh and not self._ended:
                    self._lock.wait(WAIT_S)
                if self._error:
                    raise SourceError(self._error)
                if not self._fresh:
                    if self._ended:
                        return
                    image = None
                else:
                    image, self._fresh = self._frame, False
            if image is None:
                yield None
                continue
            yield SourceFrame(image, f"{index:06d}")
            index += 1

    def close(self) -> None:
        """Stop the reader thread (it releases the capture itself)."""
        self._closing.set()
        self._thread.join(timeout=0.2)  # a read in progress ends at its own timeout


_CAMERA = re.compile(r"^(?:camera:(\d+)|(/dev/video\d+))$")


def is_live_uri(uri: str) -> bool:
    """True for RTSP/RTMP/HTTP streams and cameras."""
    return uri.startswith(("rtsp://", "rtsps://", "rtmp://", "http://", "https://")) or bool(_CAMERA.match(uri))


def open_stream(uri: str, source_id: str, options: LiveOptions) -> LatestFrameSource:
    """Open an RTSP (or other network) stream or a camera (``camera:N``, ``/dev/videoN``)."""
    camera = _CAMERA.match(uri)
    if camera:
        device: int | str = int(camera.group(1)) if camera.group(1) is not None else camera.group(2)

        def open_camera() -> cv2.VideoCapture:
            cap = cv2.VideoCapture(device)
            for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, options.width), (cv2.CAP_PROP_FRAME_HEIGHT, options.height),
                                (cv2.CAP_PROP_FPS, options.fps)):
                if value:
                    cap.set(prop, value)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
            return cap

        return LatestFrameSource(source_id, f"camera {uri}", open_camera, options)
    # FFmpeg options for OpenCV's backend: transport, and no input buffering.
    os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = f"rtsp_transport;{options.rtsp_transport}|fflags;nobuffer"
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(options.open_timeout_s * 1000),
              cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(options.stall_timeout_s * 1000)]
    return LatestFrameSource(source_id, f"stream {uri}", lambda: cv2.VideoCapture(uri, cv2.CAP_FFMPEG, params),
                             options)
