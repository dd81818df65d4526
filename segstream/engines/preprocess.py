"""Metadata-driven preprocessing: a BGR uint8 frame to the model's NCHW float32 tensor.

Resizing is linear in the pixel values, so it commutes with the per-channel affine
standardisation: we resize first (fewer pixels to normalise when frames are larger than
the model input) and then apply mean, std and scale in the order the metadata names.

What is resized is the metadata's choice (``resize_precision``): the frame converted to
float (ESPNet's own order, which its bit-exact masks need), or the 8-bit frame itself,
which is 3-4x cheaper at 1024x512 and up to 30x for a small model input on a 1080p frame.
Nearest-neighbour resizing picks pixels and computes nothing, so it always takes the 8-bit
path: the result is the same.

On the float path, a linear resize to a much smaller input reads only the rows next to
each sample point; only those are converted to float (``SparseRows``), not the whole
frame: 4.1 -> 0.4 ms per 1080p frame for a 64x128 input here. That OpenCV reads nothing
else is checked on the first frame of each size, against the whole conversion with every
other row NaN; where the result would differ in one bit, the whole frame is converted.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from segstream.engines.metadata import ChannelOrder, ModelMetadata, NormalizeOrder

logger = logging.getLogger(__name__)

_INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}


def normalization_affine(metadata: ModelMetadata) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel float32 ``(gain, offset)``, indexed by the model's input channel, such
    that ``x * gain + offset`` applies the metadata's mean, std and scale in their order."""
    mean = np.asarray(metadata.mean, np.float64)
    std = np.asarray(metadata.std, np.float64)
    gain = metadata.scale / std
    if metadata.normalize_order is NormalizeOrder.STANDARDIZE_THEN_SCALE:
        offset = -mean * metadata.scale / std
    else:
        offset = -mean / std
    return gain.astype(np.float32), offset.astype(np.float32)


def linear_taps(src: int, dst: int, margin: int = 0) -> np.ndarray:
    """The source indices (sorted, unique) that a linear resize from ``src`` to ``dst``
    samples along one axis (each sample point's two neighbours), with ``margin`` more on
    each side."""
    centres = np.floor((np.arange(dst) + 0.5) * (src / dst) - 0.5).astype(np.int64)
    taps = np.concatenate([centres + k for k in range(-margin, 2 + margin)])
    return np.unique(np.clip(taps, 0, src - 1))


class SparseRows:
    """A frame converted to float32 only in the rows a linear resize reads.

    Args:
        shape: the frames' shape (H, W, 3).
        rows: the rows to convert (``linear_taps``).
    """

    SPARSE_AT_MOST = 0.5  # of the frame's rows, else the whole conversion is as cheap

    def __init__(self, shape: tuple[int, ...], rows: np.ndarray) -> None:
        self.rows = rows
        self.buffer = np.full(shape, np.nan, np.float32)  # rows never written stay NaN

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """The buffer, with this frame's sampled rows in it."""
        self.buffer[self.rows] = frame[self.rows]
        return self.buffer


class Preprocessor:
    """Turns frames into model input tensors as the model's metadata prescribes.

    The affine part is folded into one multiply-add per channel: ``x * gain + offset``.

    Example:
        >>> pre = Preprocessor(ModelMetadata.example())
        >>> pre(np.zeros((540, 960, 3), np.uint8)).shape
        (1, 3, 512, 1024)
    """

    def __init__(self, metadata: ModelMetadata) -> None:
        self.metadata = metadata
        self._gain, self._offset = normalization_affine(metadata)
        self._size = (metadata.input_width, metadata.input_height)
        self._interp = _INTERPOLATION[metadata.resize_interpolation]
        self._swap = metadata.channel_order is ChannelOrder.RGB
        self._resize_8bit = metadata.resize_precision == "uint8" or self._interp == cv2.INTER_NEAREST
        self._float: np.ndarray | None = None
        self._sparse: SparseRows | None = None  # for the frames' shape, where it is exact

    def _as_float(self, frame: np.ndarray) -> np.ndarray:
        """The frame as float32, in a buffer kept from frame to frame (a fresh 25 MB one at
        1080p costs its page faults every frame)."""
        if self._sparse is not None and self._sparse.buffer.shape == frame.shape:
            return self._sparse(frame)
        if self._float is None or self._float.shape != frame.shape:
            self._sparse = self._sparse_for(frame)
            if self._sparse is not None:
                self._float = None
                return self._sparse(frame)
            self._float = np.empty(frame.shape, np.float32)
        np.copyto(self._float, frame)
        return self._float

    def _sparse_for(self, frame: np.ndarray) -> SparseRows | None:
        """A ``SparseRows`` for frames of this shape if it pays and resizes exactly as the
        whole conversion does (checked on ``frame``), else None."""
        if self._interp != cv2.INTER_LINEAR or frame.shape[0] <= self._size[1]:
            return None
        whole = None
        for margin in (0, 1):
            rows = linear_taps(frame.shape[0], self._size[1], margin)
            if rows.size > SparseRows.SPARSE_AT_MOST * frame.shape[0]:
                return None
            if whole is None:
                whole = cv2.resize(frame.astype(np.float32), self._size, interpolation=self._interp)
            sparse = SparseRows(frame.shape, rows)
            if np.array_equal(whole, cv2.resize(sparse(frame), self._size, interpolation=self._interp)):
                return sparse  # NaN would be in it where OpenCV read a row left out
        logger.info("a linear resize %s -> %s reads beyond its sample rows here: converting whole frames",
                    frame.shape[:2], self._size[::-1])
        return None

    def resize(self, frame: np.ndarray) -> np.ndarray:
        """Only the resize: a BGR uint8 (h, w, 3) image at the model's input size, for
        backends that normalise on the GPU (a quarter of the bytes of the float tensor)."""
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"expected a BGR frame of shape (H, W, 3), found shape {frame.shape}")
        if (frame.shape[1], frame.shape[0]) == self._size:
            return frame
        return cv2.resize(frame, self._size, interpolation=self._interp)

    def __call__(self, frame: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Preprocess one BGR uint8 frame (H, W, 3) into a (1, 3, h, w) float32 tensor.

        Args:
            frame: the frame.
            out: a (1, 3, h, w) float32 array to write into (saves a 6 MB allocation
                and its page faults per frame in a stream); a new one if None.
        """
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"expected a BGR frame of shape (H, W, 3), found shape {frame.shape}")
        image = frame if self._resize_8bit else self._as_float(frame)
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size, interpolation=self._interp)
        if self._swap:
            image = image[:, :, ::-1]
        if out is None:
            out = np.empty((1, 3, self._size[1], self._size[0]), np.float32)
        for c in range(3):
            np.multiply(image[:, :, c], self._gain[c], out=out[0, c])
            out[0, c] += self._offset[c]
        return out
