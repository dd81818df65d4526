"""INT8 calibration data: frames from a folder, preprocessed exactly as the pipeline does.

On TensorRT 10.x the batches feed an entropy calibrator (``make_entropy_calibrator``);
its calibration cache file makes the next build skip calibration. On 11.x the same
batches are the calibration data for inserting Q/DQ nodes into the ONNX.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from types import ModuleType
from typing import Iterator

import cv2
import numpy as np

from segstream.datasets.images import IMAGE_SUFFIXES, image_files
from segstream.engines.metadata import ModelMetadata
from segstream.engines.preprocess import Preprocessor
from segstream.errors import ModelError

logger = logging.getLogger(__name__)


class CalibrationBatches:
    """(1, 3, H, W) float32 batches from the images in ``folder``.

    Args:
        folder: a folder of images (natural order; unreadable files are skipped and counted).
        metadata: the model's metadata; preprocessing is the pipeline's own ``Preprocessor``.
        limit: use at most this many images (spread evenly over the folder).

    Raises:
        ModelError: the folder is missing or holds no images.

    Example:
        >>> batches = CalibrationBatches("frames/", metadata)      # doctest: +SKIP
        >>> next(iter(batches)).shape                              # doctest: +SKIP
        (1, 3, 512, 1024)
    """

    batch_size = 1

    def __init__(self, folder: str | Path, metadata: ModelMetadata, limit: int = 500) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelError(f"--calib {folder} is not a folder; give a folder of frames like the ones the "
                             f"engine will see (a few hundred)")
        files = image_files(folder.iterdir())
        if not files:
            raise ModelError(f"--calib {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        if len(files) > limit:
            files = [files[i * len(files) // limit] for i in range(limit)]
        self.files = files
        self.metadata = metadata
        self.unreadable = 0
        self._preprocess = Preprocessor(metadata)

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[np.ndarray]:
        for i, path in enumerate(self.files):
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is None:
                self.unreadable += 1
                logger.warning("calibration: skipped unreadable image %s", path)
                continue
            if i % 50 == 0:
                logger.info("calibration: image %d of %d", i + 1, len(self.files))
            yield self._preprocess(frame)

    def fingerprint(self) -> str:
        """A hash of the images (names and sizes) and of the preprocessing, for cache keys."""
        digest = hashlib.sha256(self.metadata.to_json().encode())
        for path in self.files:
            digest.update(f"{path.name}:{path.stat().st_size}".encode())
        return digest.hexdigest()[:16]

    def as_array(self) -> np.ndarray:
        """All batches stacked, (N, 3, H, W): calibration data for Q/DQ insertion."""
        return np.concatenate(list(self), axis=0)


def make_entropy_calibrator(trt: ModuleType, batches: CalibrationBatches, cache_file: Path) -> object:
    """A ``tensorrt.IInt8EntropyCalibrator2`` (TensorRT 10.x) fed from ``batches``.

    Batches are copied into one CUDA tensor that TensorRT reads by address. The
    calibration table is kept in ``cache_file``; when it exists, TensorRT reads it and
    skips calibration.
    """
    import torch

    h, w = batches.metadata.input_height, batches.metadata.input_width

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[name-defined, misc]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = iter(batches)
            self._device = torch.empty((batches.batch_size, 3, h, w), dtype=torch.float32, device="cuda")

        def get_batch_size(self) -> int:
            return batches.batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self._batches, None)
            if batch is None:
                return None
            self._device.copy_(torch.from_numpy(batch))
            torch.cuda.synchronize()
            return [int(self._device.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            if cache_file.is_file():
                logger.info("calibration: reusing %s", cache_file)
                return cache_file.read_bytes()
            return None

        def write_calibration_cache(self, cache: object) -> None:
            tmp = cache_file.with_name(cache_file.name + ".tmp")
            tmp.write_bytes(bytes(cache))
            tmp.replace(cache_file)
            logger.info("calibration: wrote %s", cache_file)

    return EntropyCalibrator()
