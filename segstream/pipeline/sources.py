"""Frame sources: video files, image folders and globs, a synthetic test pattern, and the
entry point ``open_source(uri)`` that also opens dataset replays (``datasets.py``) and
streams and cameras (``streams.py``). Every source yields ``SourceFrame`` objects holding
BGR uint8 images.
"""

from __future__ import annotations

import glob
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Protocol

import cv2
import numpy as np

if TYPE_CHECKING:
    from segstream.pipeline.streams import LiveOptions

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
        gt: ground-truth label map (uint8, H x W) for datasets that have one, else None.
        time_s: the frame's own timestamp, seconds from the first frame (KITTI
            timestamps), or None; pacing at ``native`` rate follows it.
    """

    image: np.ndarray | None
    name: str
    error: str = ""
    gt: np.ndarray | None = None
    time_s: float | None = None


class FrameSource(Protocol):
    """What the capture stage reads from."""

    source_id: str
    fps: float  # nominal frame rate (0 when unknown)
    live: bool  # a live source (camera, stream, synthetic): default policy live
    self_paced: bool  # frames arrive at their own pace (streams, cameras): never scheduled
    gt_kind: str  # what ground truth frames carry ("" for none), e.g. cityscapes-label-ids

    def frames(self) -> Iterator[SourceFrame]:
        """Frames in order; the iterator ends at end of stream."""
        ...

    def close(self) -> None:
        """Release the device or file."""
        ...


def image_files(paths: Iterable[Path]) -> list[Path]:
    """The image files among ``paths`` (by suffix), in natural order (``2.png`` before ``10.png``)."""
    return sorted((p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: natural_key(p.name))


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
    """A video file read through OpenCV's FFmpeg backend; ``loop`` starts it over at the end
    (frame indices keep counting)."""

    live = False
    gt_kind = ""
    self_paced = False

    def __init__(self, path: Path, source_id: str, loop: bool = False) -> None:
        self.path = path
        self.source_id = source_id
        self.loop = loop
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
                if not self.loop or index == 0:
                    return
                self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, image = self._cap.read()
                if not ok:
                    return
            yield SourceFrame(image, f"{index:06d}")
            index += 1

    def close(self) -> None:
        self._cap.release()


@dataclass(frozen=True)
class ImageEntry:
    """One image of an image source, with its ground truth and timestamp if known."""

    path: Path
    gt_path: Path | None = None
    time_s: float | None = None


class ImageListSource:
    """Images in a given order (folders, globs, dataset layouts); unreadable files are
    reported as such, never raised.

    Args:
        entries: the images, in order (paths are wrapped into ``ImageEntry``).
        source_id: the source id.
        description: what the list came from, for error messages.
        fps: nominal frame rate (0 = unknown).
        gt_kind: what the ground truth holds, if entries have any.
    """

    live = False
    self_paced = False

    def __init__(self, entries: list[ImageEntry] | list[Path], source_id: str, description: str, fps: float = 0.0,
                 gt_kind: str = "") -> None:
        if not entries:
            raise SourceError(f"{description} holds no images; expected files ending in "
                              f"{', '.join(sorted(IMAGE_SUFFIXES))}")
        self.entries = [e if isinstance(e, ImageEntry) else ImageEntry(Path(e)) for e in entries]
        self.source_id = source_id
        self.frame_count = len(self.entries)
        self.fps = fps
        self.gt_kind = gt_kind

    def frames(self) -> Iterator[SourceFrame]:
        for entry in self.entries:
            path = entry.path
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if image is None:
                yield SourceFrame(None, path.stem, f"cannot decode {path.name}", time_s=entry.time_s)
                continue
            gt = None
            if entry.gt_path is not None:
                gt = cv2.imread(str(entry.gt_path), cv2.IMREAD_GRAYSCALE)
                if gt is None:
                    logger.warning("cannot decode ground truth %s; frame %s goes without", entry.gt_path, path.stem)
            try:
                yield SourceFrame(to_bgr(image), path.stem, gt=gt, time_s=entry.time_s)
            except ValueError as exc:
                yield SourceFrame(None, path.stem, f"{path.name}: {exc}", time_s=entry.time_s)

    def close(self) -> None:
        pass


class TestPatternSource:
    """Synthetic moving pattern: needs no files; live (paced at ``fps`` like a camera by
    the capture stage, or as fast as possible with ``--rate max``).

    URI: ``test-pattern[:WIDTHxHEIGHT[@FPS]]``, e.g. ``test-pattern:1280x720@30``.
    """

    live = True
    self_paced = False
    gt_kind = ""
    __test__ = False  # not a pytest class

    def __init__(self, source_id: str, width: int = 960, height: int = 540, fps: float = 25.0) -> None:
        self.source_id = source_id
        self.width, self.height, self.fps = width, height, fps
        self.frame_count = 0
        yy, xx = np.mgrid[0:height, 0:width]
        self._base = np.dstack([(xx * 255 // max(width - 1, 1)), (yy * 255 // max(height - 1, 1)),
                                np.full_like(xx, 96)]).astype(np.uint8)

    def frames(self) -> Iterator[SourceFrame]:
        """Frames stamped ``index / fps``; the capture stage paces them (``--rate``)."""
        index = 0
        while True:
            image = self._base.copy()
            x = int((index * 7) % max(self.width - 120, 1))
            cv2.rectangle(image, (x, self.height // 3), (x + 120, self.height // 3 + 120), (0, 0, 230), -1)
            cv2.circle(image, (self.width - x - 60, 2 * self.height // 3), 50, (230, 230, 230), -1)
            cv2.putText(image, f"{index:06d}", (20, 50), cv2.FONT_HERSHEY_SIMPLEX, 1.4, (255, 255, 255), 3)
            yield SourceFrame(image, f"{index:06d}", time_s=index / self.fps if self.fps > 0 else None)
            index += 1

    def close(self) -> None:
        pass


_PATTERN = re.compile(r"^test-pattern(?::(\d+)x(\d+))?(?:@(\d+(?:\.\d+)?))?$")


def default_source_id(uri: str) -> str:
    """A readable id from a URI: the file or folder name, or ``test-pattern``."""
    if uri.startswith("test-pattern"):
        return "test-pattern"
    if uri.startswith("camera:"):
        return "camera" + uri.split(":", 1)[1]
    if "://" in uri:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", uri.split("://", 1)[1]).strip("_") or "stream"
    from segstream.pipeline.datasets import DATASETS

    scheme, _, rest = uri.partition(":")
    if rest and scheme in DATASETS:
        parts = rest.split(":")
        name = "-".join([Path(parts[0].rstrip("/")).name, *parts[1:]])
        return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{scheme}-{name}")
    stem = Path(uri.split("*")[0].rstrip("/") or "glob").stem
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem).strip("_.-") or "source"


def open_source(uri: str, source_id: str | None = None, loop: bool = False,
                live_options: "LiveOptions | None" = None) -> FrameSource:
    """Open the source named by ``uri``.

    Accepted: ``test-pattern[:WxH[@FPS]]``, a video file, a folder of images, a glob
    (``'frames/*.png'``), or a dataset (``cityscapes:ROOT[:SPLIT[:CITY]]``,
    ``kitti-raw:DRIVE_DIR[:CAMERA]``, ``kitti-semantics:ROOT[:SPLIT]``,
    ``kitti360:ROOT:SEQUENCE``, see ``segstream.pipeline.datasets``).

    Args:
        uri: what to open.
        source_id: the id (default: from the name).
        loop: start a video file over at its end.
        live_options: how streams and cameras connect (``rtsp://...``, ``camera:N``,
            ``/dev/videoN``; see ``segstream.pipeline.streams``).

    Raises:
        SourceError: nothing usable at ``uri``; says what was expected.
    """
    from segstream.pipeline.datasets import DATASETS, open_dataset
    from segstream.pipeline.streams import LiveOptions, is_live_uri, open_stream

    source_id = source_id or default_source_id(uri)
    if is_live_uri(uri):
        return open_stream(uri, source_id, live_options or LiveOptions())
    scheme = uri.split(":", 1)[0]
    if scheme in DATASETS:
        return open_dataset(uri, source_id)
    match = _PATTERN.match(uri)
    if match:
        w, h, fps = match.groups()
        return TestPatternSource(source_id, int(w or 960), int(h or 540), float(fps or 25.0))
    if uri.startswith("test-pattern"):
        raise SourceError(f"bad test pattern {uri!r}; expected test-pattern[:WIDTHxHEIGHT[@FPS]], "
                          f"e.g. test-pattern:1280x720@30")
    if any(ch in uri for ch in "*?["):
        return ImageListSource(image_files(Path(p) for p in glob.glob(uri)), source_id, f"glob {uri!r}")
    path = Path(uri).expanduser()
    if path.is_dir():
        return ImageListSource(image_files(path.iterdir()), source_id, f"folder {path}")
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return ImageListSource([path], source_id, f"file {path}")
        return VideoFileSource(path, source_id, loop)
    raise SourceError(f"source {uri!r} not found: expected a video file, an image folder, a glob such as "
                      f"'frames/*.png', test-pattern, or a dataset ({', '.join(s + ':...' for s in DATASETS)})")
