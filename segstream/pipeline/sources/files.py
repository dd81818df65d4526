"""Sources read from files: video files, image lists (folders, globs, dataset layouts) and a
synthetic test pattern that needs no file at all."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from segstream.datasets.images import IMAGE_SUFFIXES, VIDEO_SUFFIXES, ImageEntry
from segstream.errors import SourceError
from segstream.pipeline.sources.base import FrameBuffers, SourceFrame, decode_target, to_bgr
from segstream.pipeline.sources.image_headers import image_size, too_large
from segstream.pipeline.sources.reduced_decode import read_reduced

logger = logging.getLogger(__name__)


class VideoFileSource:
    """A video file read through OpenCV's FFmpeg backend; ``loop`` starts it over at the end
    (frame indices keep counting). Decodes into ``buffers`` where the capture gives them."""

    live = False
    gt_kind = ""
    self_paced = False
    buffers: FrameBuffers | None = None

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
        self.frames_missing = 0  # the container holds more frames than could be read: cut short
        width, height = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self._shape = (height, width, 3) if width > 0 and height > 0 else None

    def _read(self) -> tuple[bool, np.ndarray | None]:
        """The next frame, decoded into ``buffers`` where there are some (OpenCV writes into
        an array of the right size and type; it makes its own for another size)."""
        target = decode_target(self.buffers, self._shape) if self._shape is not None else None
        if target is None:
            return self._cap.read()
        ok, image = self._cap.read(target)
        if ok and image is not None and image.shape != self._shape:
            self._shape = image.shape  # the stream changed size: ask for that from now on
        return ok, image

    def frames(self) -> Iterator[SourceFrame]:
        index = in_pass = 0
        while True:
            ok, image = self._read()
            if not ok:
                self._check_complete(in_pass)
                if not self.loop or index == 0:
                    return
                self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                in_pass = 0
                ok, image = self._read()
                if not ok:
                    return
            yield SourceFrame(image, f"{index:06d}")
            index += 1
            in_pass += 1

    def _check_complete(self, read: int) -> None:
        """Warn (once) about a file that ends before the frame count its container gives."""
        if self.frames_missing or not 0 < read < self.frame_count:
            return
        self.frames_missing = self.frame_count - read
        logger.warning("%s ended after %d of the %d frames its container lists: the file is cut short (an "
                       "interrupted download or recording?); %d frames are missing", self.path, read,
                       self.frame_count, self.frames_missing)

    def connection(self) -> dict[str, int]:
        """``frames_missing`` for a file cut short, else {}."""
        return {"frames_missing": self.frames_missing} if self.frames_missing else {}

    def close(self) -> None:
        self._cap.release()


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
    instance_gt = False  # also read each image's gtFine_instanceIds.png (capture sets it)
    # JPEGs decoded at 1/2, 1/4 or 1/8 of their size where that is still at least this
    # (height, width), the model's input (capture sets it: ``--reduced-decode``)
    reduce_to: tuple[int, int] | None = None

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
            image, full_size, problem = self._decode(path)
            if image is None:
                yield SourceFrame(None, path.stem, problem, time_s=entry.time_s)
                continue
            gt = None
            if entry.gt_path is not None:
                gt = _read_ground_truth(entry.gt_path, cv2.IMREAD_GRAYSCALE)
                if gt is None:
                    logger.warning("cannot decode ground truth %s; frame %s goes without", entry.gt_path, path.stem)
            instances = self._instance_gt(entry.gt_path) if self.instance_gt and entry.gt_path else None
            try:
                yield SourceFrame(to_bgr(image), path.stem, gt=gt, time_s=entry.time_s, gt_instances=instances,
                                  full_size=full_size)
            except ValueError as exc:
                yield SourceFrame(None, path.stem, f"{path.name}: {exc}", time_s=entry.time_s)

    def _decode(self, path: Path) -> tuple[np.ndarray | None, tuple[int, int] | None, str]:
        """The image (None where it cannot be read), its full size where it was decoded
        reduced, and why it was not read."""
        data, problem = _encoded(path)
        if data is None:
            return None, None, problem
        if self.reduce_to is not None:
            image, full_size = read_reduced(data, self.reduce_to)
        else:
            image, full_size = cv2.imdecode(data, cv2.IMREAD_UNCHANGED), None
        return image, full_size, "" if image is not None else f"cannot decode {path.name}"

    @staticmethod
    def _instance_gt(gt_path: Path) -> np.ndarray | None:
        """The ``*_gtFine_instanceIds.png`` beside a ``*_gtFine_labelIds.png``, or None."""
        path = gt_path.with_name(gt_path.name.replace("_labelIds.png", "_instanceIds.png"))
        ids = _read_ground_truth(path, cv2.IMREAD_UNCHANGED) if path.is_file() else None
        if ids is None or ids.ndim != 2:
            return None
        return ids.astype(np.uint16)

    def connection(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass


def _encoded(path: Path) -> tuple[np.ndarray | None, str]:
    """The bytes of an image file, or None and why not: it cannot be read, it is empty, or
    its header claims more pixels than a frame may have (refused before OpenCV allocates
    them)."""
    try:
        data = np.fromfile(path, np.uint8)
    except OSError as exc:
        return None, f"cannot read {path.name}: {exc.strerror or exc}"
    if not data.size:
        return None, f"cannot decode {path.name}: the file is empty"
    refused = too_large(image_size(data))
    return (None, f"{path.name}: {refused}") if refused else (data, "")


def _read_ground_truth(path: Path, flags: int) -> np.ndarray | None:
    """A ground-truth image, or None where it cannot be read (logged when ``_encoded``
    says why)."""
    data, problem = _encoded(path)
    if data is None:
        logger.warning("ground truth %s is not read: %s", path, problem)
        return None
    return cv2.imdecode(data, flags)


class TestPatternSource:
    """Synthetic moving pattern: needs no files; live (paced at ``fps`` like a camera by
    the capture stage, or as fast as possible with ``--rate max``).

    URI: ``test-pattern[:WIDTHxHEIGHT[@FPS]]``, e.g. ``test-pattern:1280x720@30``. Draws
    into ``buffers`` where the capture gives them.
    """

    live = True
    self_paced = False
    gt_kind = ""
    buffers: FrameBuffers | None = None
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
            image = decode_target(self.buffers, self._base.shape)
            if image is None:
                image = np.empty_like(self._base)
            np.copyto(image, self._base)
            x = int((index * 7) % max(self.width - 120, 1))
            cv2.rectangle(image, (x, self.height // 3), (x + 120, self.height // 3 + 120), (0, 0, 230), -1)
            cv2.circle(image, (self.width - x - 60, 2 * self.height // 3), 50, (230, 230, 230), -1)
            cv2.putText(image, f"{index:06d}", (20, 50), cv2.FONT_HERSHEY_SIMPLEX, 1.4, (255, 255, 255), 3)
            yield SourceFrame(image, f"{index:06d}", time_s=index / self.fps if self.fps > 0 else None)
            index += 1

    def connection(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass
