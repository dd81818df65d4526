"""Training samples: dataset layouts (segmentation) and class folders (classification).

Segmentation: any dataset source with ground truth (``cityscapes:ROOT[:SPLIT]``,
``kitti-semantics:ROOT``, ``kitti360:ROOT:SEQ``); their label ids are mapped to the 19
Cityscapes train ids. Classification: ``ROOT/<label>/*.png`` with one folder per label of
the model; for a joint model an image may have a train-id mask beside it
(``NAME_trainIds.png``).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from segstream.datasets.cityscapes import IGNORE_INDEX, label_ids_to_train_ids
from segstream.datasets.images import image_files
from segstream.engines.metadata import ChannelOrder, ModelMetadata
from segstream.engines.preprocess import normalization_affine
from segstream.errors import ModelError

logger = logging.getLogger(__name__)

MASK_SUFFIX = "_trainIds.png"


@dataclass(frozen=True)
class Sample:
    """One training image with its targets: a mask file (and whether it holds Cityscapes
    label ids to map) and/or an image label index."""

    image: Path
    mask: Path | None = None
    mask_label_ids: bool = False
    label: int | None = None


def dataset_samples(uri: str) -> list[Sample]:
    """Samples of a dataset source URI; every image must have ground truth.

    Raises:
        ModelError: not a dataset with ground truth.
    """
    from segstream.datasets.layouts import open_dataset
    from segstream.errors import SourceError

    try:
        source = open_dataset(uri)
    except SourceError as exc:
        raise ModelError(f"--data {uri}: {exc}") from exc
    samples = [Sample(e.path, e.gt_path, True) for e in source.entries if e.gt_path is not None]
    if not samples:
        raise ModelError(f"--data {uri} has no ground truth to train on (Cityscapes gtFine/*_labelIds.png, KITTI "
                         f"semantics semantic/, KITTI-360 semantic/)")
    logger.info("%s: %d images with ground truth", uri, len(samples))
    return samples


def folder_samples(root: Path, label_names: tuple[str, ...]) -> list[Sample]:
    """Samples of a folder-per-label layout whose folder names are the model's labels.

    Raises:
        ModelError: missing folder, a folder not named after a label, or no images.
    """
    if not root.is_dir():
        raise ModelError(f"--data {root} is not a folder; a classifier trains on ROOT/<label>/*.png")
    samples = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name not in label_names:
            raise ModelError(f"--data {root}: folder {folder.name!r} is not a label of this model; its labels are "
                             f"{', '.join(label_names)}")
        for path in image_files(folder.iterdir()):
            if not path.name.endswith(MASK_SUFFIX):
                mask = path.with_name(path.stem + MASK_SUFFIX)
                samples.append(Sample(path, mask if mask.is_file() else None, label=label_names.index(folder.name)))
    if not samples:
        raise ModelError(f"--data {root} holds no images in label folders ({', '.join(label_names)})")
    return samples


@dataclass(frozen=True)
class Augment:
    """Random scale, crop (padding with the ignore label), horizontal flip and colour jitter."""

    crop: tuple[int, int]  # (H, W)
    scale: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    jitter: float = 0.2


class SampleLoader:
    """Reads, augments and normalises samples into batches of tensors.

    Args:
        samples: the samples.
        metadata: the model's metadata (channel order and normalisation).
        augment: the augmentation, or None (validation): resize to ``height``, keeping the
            aspect ratio, the width rounded to a multiple of ``multiple``.
        height: the height images are validated at.
        multiple: the model's size multiple.
    """

    def __init__(self, samples: list[Sample], metadata: ModelMetadata, augment: Augment | None,
                 height: int, multiple: int = 32, seed: int = 0) -> None:
        self.samples = samples
        self.augment = augment
        self.height = height
        self.multiple = multiple
        gain, offset = normalization_affine(metadata)
        self._gain, self._offset = gain.reshape(3, 1, 1), offset.reshape(3, 1, 1)
        self._rgb = metadata.channel_order is ChannelOrder.RGB
        self._rng = random.Random(seed)

    def load(self, sample: Sample) -> tuple[np.ndarray, np.ndarray | None, int]:
        """(3, H, W) float32 image, (H, W) int64 mask or None, label (-1 if none)."""
        image = cv2.imread(str(sample.image), cv2.IMREAD_COLOR)
        if image is None:
            raise ModelError(f"cannot read training image {sample.image}")
        mask = None
        if sample.mask is not None:
            mask = cv2.imread(str(sample.mask), cv2.IMREAD_UNCHANGED)
            if mask is None:
                raise ModelError(f"cannot read mask {sample.mask}")
            mask = label_ids_to_train_ids(mask) if sample.mask_label_ids else mask
        image, mask = self._augment(image, mask) if self.augment else self._resize(image, mask)
        if self._rgb:
            image = image[:, :, ::-1]
        tensor = image.transpose(2, 0, 1).astype(np.float32) * self._gain + self._offset
        return tensor, None if mask is None else mask.astype(np.int64), -1 if sample.label is None else sample.label

    def _resize(self, image: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        h = self.height
        w = max(self.multiple, round(image.shape[1] * h / image.shape[0] / self.multiple) * self.multiple)
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        if mask is not None:
            mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
        return image, mask

    def _augment(self, image: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        aug, rng = self.augment, self._rng
        if aug is None:
            return self._resize(image, mask)
        ch, cw = aug.crop
        # scale relative to the size at which the crop covers the image's height
        base = ch / image.shape[0]
        s = base * rng.uniform(*aug.scale)
        size = (max(1, round(image.shape[1] * s)), max(1, round(image.shape[0] * s)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        if mask is not None:
            mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
        pad_h, pad_w = max(0, ch - image.shape[0]), max(0, cw - image.shape[1])
        if pad_h or pad_w:
            image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=0)
            if mask is not None:
                mask = cv2.copyMakeBorder(mask, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=IGNORE_INDEX)
        y = rng.randint(0, image.shape[0] - ch)
        x = rng.randint(0, image.shape[1] - cw)
        image = image[y:y + ch, x:x + cw]
        mask = None if mask is None else mask[y:y + ch, x:x + cw]
        if aug.flip and rng.random() < 0.5:
            image = image[:, ::-1]
            mask = None if mask is None else mask[:, ::-1]
        if aug.jitter:
            j = aug.jitter
            image = image.astype(np.float32) * rng.uniform(1 - j, 1 + j)  # brightness
            mean = image.mean()
            image = (image - mean) * rng.uniform(1 - j, 1 + j) + mean  # contrast
            gray = image.mean(axis=2, keepdims=True)
            image = (image - gray) * rng.uniform(1 - j, 1 + j) + gray  # saturation
            image = np.clip(image, 0, 255)
        return np.ascontiguousarray(image), None if mask is None else np.ascontiguousarray(mask)

    def batches(self, batch_size: int, shuffle: bool) -> "list[list[Sample]]":
        order = list(self.samples)
        if shuffle:
            self._rng.shuffle(order)
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
