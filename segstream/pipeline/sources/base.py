"""What every frame source is: the ``FrameSource`` protocol, the ``SourceFrame`` it yields,
and the conversion of any 8/16-bit grey, BGR or BGRA image to the BGR uint8 the pipeline carries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import cv2
import numpy as np


@dataclass
class SourceFrame:
    """One frame from a source.

    Attributes:
        image: BGR uint8 (H, W, 3), or None for a frame that could not be decoded (the
            capture stage skips and counts it).
        name: the file stem for image sources, the zero-padded index otherwise.
        error: why ``image`` is None.
        gt: ground-truth label map (uint8, H x W) for datasets that have one, else None.
        gt_instances: instance ground truth (uint16, H x W, Cityscapes' ``label_id * 1000 +
            k``) when asked for (``instance_gt``) and the dataset has it, else None.
        time_s: the frame's own timestamp, seconds from the first frame (KITTI
            timestamps), or None; pacing at ``native`` rate follows it.
        full_size: the (height, width) the image has in its file, where ``image`` was
            decoded at a fraction of it (``reduced_decode``); None otherwise.
    """

    image: np.ndarray | None
    name: str
    error: str = ""
    gt: np.ndarray | None = None
    gt_instances: np.ndarray | None = None
    time_s: float | None = None
    full_size: tuple[int, int] | None = None


FrameBuffers = Callable[[tuple[int, int, int]], "np.ndarray | None"]
"""Where a source may decode its next frame: given the frame's (H, W, 3) shape, a writable
BGR uint8 array of that shape (the next shared-memory slot of the capture's ring, so the
frame is never copied on its way out), or None (decode into an array of your own)."""


class FrameSource(Protocol):
    """What the capture stage reads from."""

    source_id: str
    fps: float  # nominal frame rate (0 when unknown)
    live: bool  # a live source (camera, stream, synthetic): default policy live
    self_paced: bool  # frames arrive at their own pace (streams, cameras): never scheduled
    gt_kind: str  # what ground truth frames carry ("" for none), e.g. cityscapes-label-ids
    frame_count: int  # frames the source says it holds (0 when unknown or endless)

    def frames(self) -> Iterator[SourceFrame]:
        """Frames in order; the iterator ends at end of stream."""
        ...

    def connection(self) -> dict[str, int]:
        """Health counters: a live source's ``reconnects``, ``connect_attempts``,
        ``stalls``, ``streaming`` (open now) and ``opened`` (ever); a video file cut short,
        ``frames_missing``; {} when there is nothing to say."""
        ...

    def close(self) -> None:
        """Release the device or file."""
        ...


def decode_target(buffers: FrameBuffers | None, shape: tuple[int, int, int]) -> np.ndarray | None:
    """The array a source that can decode in place (it has a ``buffers`` attribute, which
    the capture stage sets) should write its next frame of ``shape`` into, or None.

    Such a source yields that very array as the frame's image when the frame filled it; a
    frame of another shape (a stream that changed size) comes in an array of its own, and
    the capture copies it as it would any other.
    """
    return buffers(shape) if buffers is not None else None


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
