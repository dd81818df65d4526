"""Live sources: RTSP streams and cameras, read by a thread that keeps only the newest frame.

A reader thread owns the OpenCV capture: it opens it (retrying with capped exponential
backoff that starts over once a stream opens), reads continuously, and keeps the newest
frame, so the frame handed on is never one from a growing decoder buffer. A stream that
ends, errors or delivers nothing for ``stall_timeout_s`` is reopened (each attempt logged,
reconnects and stalls counted). A stream that
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
from enum import Enum
from typing import Callable, Iterator

import cv2
import numpy as np

from segstream.errors import ConfigError, SourceError
from segstream.pipeline.settings import coerce_fields, setting
from segstream.pipeline.sources.base import SourceFrame

logger = logging.getLogger(__name__)

WAIT_S = 0.05  # how long frames() waits for a new frame before yielding None
FAILED_READ_S = 0.5  # reads failing for this long (no timeout involved) mean the stream ended
READ_TIMEOUT_MARGIN_S = 1.0
PROBE_US = 500_000  # how long FFmpeg may look at a stream to find its format
PROBE_BYTES = 262_144
MAX_DECODE_THREADS = 64


class RtspTransport(str, Enum):
    """RTSP transport: ``tcp`` (robust) or ``udp`` (lower latency, lossy)."""

    TCP = "tcp"
    UDP = "udp"


MAX_CAMERA_SIDE = 8192  # 8K: 7680x4320 fits
MAX_CAMERA_FPS = 1000.0


def parse_size(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` to ``(width, height)``.

    Raises:
        ConfigError: not of that form.
    """
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--camera-size must be WIDTHxHEIGHT, e.g. 1280x720, found {text!r}") from None
    return width, height


@dataclass(frozen=True)
class LiveOptions:
    """How live sources connect (YAML ``live:`` or ``sources: {live: ...}``)."""

    rtsp_transport: RtspTransport = setting(RtspTransport.TCP, "RTSP transport", flag="--rtsp-transport")
    open_timeout_s: float = setting(5.0, "how long one attempt to open a stream may take (s)")
    stall_timeout_s: float = setting(5.0, "a stream that delivers nothing for this long is reopened (s)")
    connect_attempts: int = setting(5, "attempts before a stream that never opened is given up",
                                    flag="--connect-attempts", metavar="N")
    backoff_initial_s: float = setting(0.25, "first wait between attempts to open; doubles each time, and starts "
                                       "over once a stream opens (s)")
    backoff_max_s: float = setting(2.0, "longest wait between attempts to open: a stream that comes back is "
                                   "found within this (s)")
    width: int = setting(0, "camera frame width to ask for (0: the device's default)", flag="--camera-size",
                         metavar="WxH", parse=parse_size, targets=("width", "height"))
    height: int = setting(0, "camera frame height to ask for (0: the device's default)")
    fps: float = setting(0.0, "camera frame rate to ask for (0: the device's default)", flag="--camera-fps",
                         metavar="N")
    decode_threads: int = setting(1, "threads that decode a stream (0: FFmpeg's default, one per core, whose frame "
                                  "threading delays every frame by a frame interval per thread beyond the first)",
                                  flag="--decode-threads", metavar="N")

    def __post_init__(self) -> None:
        coerce_fields(self)
        if not (0 <= self.width <= MAX_CAMERA_SIDE and 0 <= self.height <= MAX_CAMERA_SIDE) or \
                self.width * self.height > MAX_CAMERA_SIDE * MAX_CAMERA_SIDE // 2:
            raise ConfigError(f"a camera size takes 0 (the device's default) or up to {MAX_CAMERA_SIDE} a side, and "
                              f"no more than {MAX_CAMERA_SIDE}x{MAX_CAMERA_SIDE // 2} in all, found "
                              f"{self.width}x{self.height}")
        if not 0 <= self.fps <= MAX_CAMERA_FPS:
            raise ConfigError(f"a camera frame rate takes 0 (the device's default) to {MAX_CAMERA_FPS}, found "
                              f"{self.fps}")
        if self.connect_attempts < 1:
            raise ConfigError(f"connect_attempts must be at least 1, found {self.connect_attempts}")
        if not 0 <= self.decode_threads <= MAX_DECODE_THREADS:
            raise ConfigError(f"decode_threads must be 0 (FFmpeg's default) to {MAX_DECODE_THREADS}, found "
                              f"{self.decode_threads}")
        for name in ("open_timeout_s", "stall_timeout_s", "backoff_initial_s", "backoff_max_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be above 0 s, found {getattr(self, name)}")


class Backoff:
    """Waits between attempts to open: doubling from ``initial`` up to ``cap``, and
    starting over after ``reset`` (a stream that opened).

        >>> b = Backoff(0.25, 1.0)
        >>> [b.next() for _ in range(4)]
        [0.25, 0.5, 1.0, 1.0]
        >>> b.reset(); b.next()
        0.25
    """

    def __init__(self, initial: float, cap: float) -> None:
        self.initial = initial
        self.cap = cap
        self._wait = initial

    def next(self) -> float:
        """The wait before the next attempt."""
        wait, self._wait = self._wait, min(self._wait * 2, self.cap)
        return min(wait, self.cap)

    def reset(self) -> None:
        """Start over from the shortest wait."""
        self._wait = self.initial


class LatestFrameSource:
    """A live source read by a background thread that keeps only the newest frame.

    A watchdog in ``frames()`` notices a stream that is open but delivers nothing for
    ``stall_timeout_s`` (a paused server keeps the connection open, and FFmpeg's own read
    timeout does not always fire): it abandons the reader thread, whose read may block for
    long, and starts a new one that reopens the stream. The abandoned thread releases its
    capture whenever its read returns.

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
        self.stalls = 0
        self._opener = opener
        self._reconnect = reconnect
        self._lock = threading.Condition()
        self._frame: np.ndarray | None = None
        self._fresh = False
        self._error = ""
        self._ended = False
        self._opened_once = False
        self._streaming = False  # a capture is open and reading
        self._last_frame = 0.0  # when it last delivered a frame (or opened)
        self._generation = 0
        self._closing = threading.Event()
        self._thread = self._start_reader()

    def _start_reader(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, args=(self._generation,), name=f"reader-{self.source_id}",
                                  daemon=True)
        thread.start()
        return thread

    # -- reader thread ----------------------------------------------------------------

    def _current(self, generation: int) -> bool:
        return generation == self._generation and not self._closing.is_set()

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

    def _run(self, generation: int) -> None:
        backoff = Backoff(self.options.backoff_initial_s, self.options.backoff_max_s)
        while self._current(generation):
            cap = self._open()
            if not self._current(generation):  # abandoned while opening
                if cap is not None:
                    cap.release()
                return
            if cap is None:
                if not self._opened_once and self.attempts >= self.options.connect_attempts:
                    self._fail(f"could not open {self.describe} after {self.attempts} attempts; check the address "
                               f"and that the server or device is up (attempts: connect_attempts)")
                    return
                self._closing.wait(backoff.next())
                continue
            if self._opened_once:
                self.reconnects += 1
            self._opened_once = True
            backoff.reset()  # the next outage starts from the shortest wait
            with self._lock:
                self._streaming, self._last_frame = True, time.monotonic()
            self._read_until_failure(cap, generation)
            cap.release()
            if not self._current(generation):
                return
            with self._lock:
                self._streaming = False
            if not self._reconnect:
                break
            logger.warning("%s: stream lost; reconnecting", self.describe)
        if generation == self._generation:
            with self._lock:
                self._ended = True
                self._lock.notify_all()

    def _read_until_failure(self, cap: cv2.VideoCapture, generation: int) -> None:
        while self._current(generation):
            ok, image = cap.read()
            now = time.monotonic()
            if not self._current(generation):
                return
            if not ok or image is None:
                # A read that fails at once (end of stream) ends the capture after
                # FAILED_READ_S of failures; a stall is the watchdog's (``frames``).
                if not self._reconnect or now - self._last_frame > min(self.options.stall_timeout_s, FAILED_READ_S):
                    return
                continue
            with self._lock:
                self._frame = image
                self._fresh = True
                self._last_frame = now
                self._lock.notify_all()

    def _fail(self, message: str) -> None:
        with self._lock:
            self._error = message
            self._ended = True
            self._lock.notify_all()

    def _watch(self) -> None:
        """Called with the lock held: reopen a stream that is open but silent."""
        if not self._reconnect or not self._streaming or self._ended:
            return
        silent = time.monotonic() - self._last_frame
        if silent < self.options.stall_timeout_s:
            return
        self.stalls += 1
        logger.warning("%s: stalled (no frame for %.1f s); reopening", self.describe, silent)
        self._streaming = False
        self._generation += 1  # the blocked reader finds itself abandoned when its read returns
        self._thread = self._start_reader()

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
                    self._watch()
                    image = None
                else:
                    image, self._fresh = self._frame, False
            if image is None:
                yield None
                continue
            yield SourceFrame(image, f"{index:06d}")
            index += 1

    def connection(self) -> dict[str, int]:
        """Reconnects so far, open attempts in all, stalls detected, and whether the stream
        is open now (``streaming``) and ever was (``opened``)."""
        return {"reconnects": self.reconnects, "connect_attempts": self.attempts, "stalls": self.stalls,
                "streaming": int(self._streaming), "opened": int(self._opened_once)}

    def close(self) -> None:
        """Stop the reader thread (it releases the capture itself)."""
        self._closing.set()
        self._thread.join(timeout=0.2)  # a read in progress ends at its own timeout


_CAMERA = re.compile(r"^(?:camera:(\d+)|(/dev/video\d+))$")


STREAM_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://")


def is_stream_uri(uri: str) -> bool:
    """True for RTSP, RTMP and HTTP streams."""
    return uri.startswith(STREAM_PREFIXES)


def is_camera_uri(uri: str) -> bool:
    """True for ``camera:N`` and ``/dev/videoN``."""
    return bool(_CAMERA.match(uri))


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
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(options.open_timeout_s * 1000),
              # FFmpeg's own read timeout is the backstop that ends a read the watchdog
              # (stall_timeout_s) has given up on
              cv2.CAP_PROP_READ_TIMEOUT_MSEC, int((options.stall_timeout_s + READ_TIMEOUT_MARGIN_S) * 1000)]
    if options.decode_threads:
        # OpenCV decodes with one thread per core by default, and FFmpeg's frame threading
        # hands out each frame only once (threads - 1) later ones have come in: on a live
        # stream, that many frame intervals of latency
        params += [cv2.CAP_PROP_N_THREADS, options.decode_threads]
    # Probing the stream for at most half a second (FFmpeg's default is 5 s) makes a
    # stream that comes back deliver frames again about a second sooner.
    ffmpeg_options = (f"rtsp_transport;{options.rtsp_transport.value}|fflags;nobuffer|"
                      f"analyzeduration;{PROBE_US}|probesize;{PROBE_BYTES}")
    return LatestFrameSource(source_id, f"stream {uri}", lambda: _open_with_options(uri, params, ffmpeg_options),
                             options)


_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_options_lock = threading.Lock()


def _open_with_options(uri: str, params: list[int], ffmpeg_options: str) -> cv2.VideoCapture:
    """Open ``uri`` with FFmpeg options for OpenCV's backend (transport, no input
    buffering). OpenCV reads them from the environment when it opens, so they are set for
    that moment only: left set, they would reach every later capture of the process (a
    video file opened with ``nobuffer`` can return no frames at all)."""
    with _options_lock:
        # Each failed attempt makes OpenCV print a warning of its own; ours say it better.
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        previous = os.environ.get(_OPTIONS_ENV)
        os.environ[_OPTIONS_ENV] = ffmpeg_options
        try:
            return cv2.VideoCapture(uri, cv2.CAP_FFMPEG, params)
        finally:
            if previous is None:
                os.environ.pop(_OPTIONS_ENV, None)
            else:
                os.environ[_OPTIONS_ENV] = previous
