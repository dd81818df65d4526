"""Frame sources: video files, image folders and globs, and a synthetic test pattern.

``open_source(uri)`` picks the source from the URI by a literal table of schemes and
checks; every source yields ``SourceFrame`` objects holding BGR uint8 images.
"""

from __future__ import annotations

import glob
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import cv2
import numpy as np

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".ts", ".flv", ".wmv"}


class SourceError(RuntimeError):
    """A source cannot be opened; the message says what was expected and how to fix it."""


@dataclass
class SourceFrame:
    """One frame from a source.

    Attributes:
        image: BGR uint8 (H, W, 3), or None for a frame that could not be decoded (the
            capture stage skips and counts it).
        name: the file stem for image sources, the zero-padded index otherwise.
        error: why ``image`` is None.
    """

    image: np.ndarray | None
    name: str
    error: str = ""


class FrameSource(Protocol):
    """What the capture stage reads from."""

    source_id: str
    fps: float  # nominal frame rate (0 when unknown)
    live: bool  # a live source (camera, stream, synthetic): default policy live

    def frames(self) -> Iterator[SourceFrame]:
        """Frames in order; the iterator ends at end of stream."""
        ...

    def close(self) -> None:
        """Release the device or file."""
        ...


def natural_key(text: str) -> list[object]:
    """Sort key that orders ``frame2`` before ``frame10``."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", text)]


def to_bgr(image: np.ndarray) -> np.ndarray:
    """Grey, BGRA or 16-bit images to BGR uint8; raises ValueError for anything else."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.dtype != np.uint8:
        raise ValueError(f"expected an 8-bit image, found dtype {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    raise ValueError(f"expected a grey, BGR or BGRA image, found shape {image.shape}")


class VideoFileSource:
    """A video file read through OpenCV's FFmpeg backend."""

    live = False

    def __init__(self, path: Path, source_id: str) -> None:
        self.path = path
        self.source_id = source_id
        self._cap = cv2.VideoCapture(str(path))
        if not self._cap.isOpened():
            raise SourceError(f"cannot open video {path}: OpenCV/FFmpeg could not read it; check that it is a "
                              f"video file ({', '.join(sorted(VIDEO_SUFFIXES))})")
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and math.isfinite(fps) and fps < 1000 else 0.0
        self.frame_count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)

    def frames(self) -> Iterator[SourceFrame]:
        index = 0
        while True:
            ok, image = self._cap.read()
            if not ok:
                return
            yield SourceFrame(image, f"{index:06d}")
            index += 1

    def close(self) -> None:
        self._cap.release()


class ImageListSource:
    """Images from a folder or a glob, in natural order; unreadable files are skipped."""

    live = False
    fps = 0.0

    def __init__(self, paths: list[Path], source_id: str, description: str) -> None:
        if not paths:
            raise SourceError(f"{description} holds no images; expected files ending in "
                              f"{', '.join(sorted(IMAGE_SUFFIXES))}")
        self.paths = paths
        self.source_id = source_id
        self.frame_count = len(paths)

    def frames(self) -> Iterator[SourceFrame]:
        for path in self.paths:
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if image is None:
                yield SourceFrame(None, path.stem, f"cannot decode {path.name}")
                continue
            try:
                yield SourceFrame(to_bgr(image), path.stem)
            except ValueError as exc:
                yield SourceFrame(None, path.stem, f"{path.name}: {exc}")

    def close(self) -> None:
        pass


class TestPatternSource:
    """Synthetic moving pattern: needs no files; paced at ``fps`` like a camera.

    URI: ``test-pattern[:WIDTHxHEIGHT[@FPS]]``, e.g. ``test-pattern:1280x720@30``.
    """

    live = True
    __test__ = False  # not a pytest class

    def __init__(self, source_id: str, width: int = 960, height: int = 540, fps: float = 25.0) -> None:
        self.source_id = source_id
        self.width, self.height, self.fps = width, height, fps
        self.frame_count = 0
        yy, xx = np.mgrid[0:height, 0:width]
        self._base = np.dstack([(xx * 255 // max(width - 1, 1)), (yy * 255 // max(height - 1, 1)),
                                np.full_like(xx, 96)]).astype(np.uint8)

    def frames(self) -> Iterator[SourceFrame]:
        index = 0
        start = time.monotonic()
        while True:
            due = start + index / self.fps if self.fps > 0 else 0
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            image = self._base.copy()
            x = int((index * 7) % max(self.width - 120, 1))
            cv2.rectangle(image, (x, self.height // 3), (x + 120, self.height // 3 + 120), (0, 0, 230), -1)
            cv2.circle(image, (self.width - x - 60, 2 * self.height // 3), 50, (230, 230, 230), -1)
            cv2.putText(image, f"{index:06d}", (20, 50), cv2.FONT_HERSHEY_SIMPLEX, 1.4, (255, 255, 255), 3)
            yield SourceFrame(image, f"{index:06d}")
            index += 1

    def close(self) -> None:
        pass


_PATTERN = re.compile(r"^test-pattern(?::(\d+)x(\d+))?(?:@(\d+(?:\.\d+)?))?$")


def default_source_id(uri: str) -> str:
    """A readable id from a URI: the file or folder name, or ``test-pattern``."""
    if uri.startswith("test-pattern"):
        return "test-pattern"
    stem = Path(uri.split("*")[0].rstrip("/") or "glob").stem or "source"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem)


def open_source(uri: str, source_id: str | None = None) -> FrameSource:
    """Open the source named by ``uri``.

    Accepted: ``test-pattern[:WxH[@FPS]]``, a video file, a folder of images, or a glob
    (``'frames/*.png'``).

    Raises:
        SourceError: nothing usable at ``uri``; says what was expected.
    """
    source_id = source_id or default_source_id(uri)
    match = _PATTERN.match(uri)
    if match:
        w, h, fps = match.groups()
        return TestPatternSource(source_id, int(w or 960), int(h or 540), float(fps or 25.0))
    if uri.startswith("test-pattern"):
        raise SourceError(f"bad test pattern {uri!r}; expected test-pattern[:WIDTHxHEIGHT[@FPS]], "
                          f"e.g. test-pattern:1280x720@30")
    if any(ch in uri for ch in "*?["):
        paths = sorted((Path(p) for p in glob.glob(uri)), key=lambda p: natural_key(p.name))
        return ImageListSource([p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES], source_id, f"glob {uri!r}")
    path = Path(uri).expanduser()
    if path.is_dir():
        paths = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                       key=lambda p: natural_key(p.name))
        return ImageListSource(paths, source_id, f"folder {path}")
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return ImageListSource([path], source_id, f"file {path}")
        return VideoFileSource(path, source_id)
    raise SourceError(f"source {uri!r} not found: expected a video file, an image folder, a glob such as "
                      f"'frames/*.png', or test-pattern")
