"""Instance labels made by a semantic model: each connected region of one class (the
pretrained ESPNet's Cityscapes ``car``) becomes an instance.

This is how segstream builds an instance dataset from frames that have no instance
annotations (the dash-cam clip of the shared data): ESPNet's masks are those of a model
with 60.3 % test mIoU on Cityscapes, a morphological opening removes specks and thin
bridges between neighbours, and regions smaller than ``min_area`` pixels are dropped. Its
limits: cars that touch become one instance, and cars ESPNet misses (small, far ones) are
missing from the labels too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from segstream.datasets.cityscapes import CLASS_NAMES
from segstream.datasets.instances import write_coco

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PseudoLabelConfig:
    """How regions of a semantic mask become instances.

    Attributes:
        semantic_class: the Cityscapes class whose regions are instances.
        instance_class: the COCO class name they are labelled with.
        min_area: regions with fewer pixels (at frame resolution) are dropped.
        opening: side of the square opening applied first (0: none).
    """

    semantic_class: str = "car"
    instance_class: str = "car"
    min_area: int = 300
    opening: int = 5


def regions_as_instances(labels: np.ndarray, config: PseudoLabelConfig = PseudoLabelConfig()
                         ) -> list[tuple[str, np.ndarray]]:
    """(class name, boolean mask) per connected region of ``config.semantic_class`` in a
    (H, W) train-id label map."""
    selected = (labels == CLASS_NAMES.index(config.semantic_class)).astype(np.uint8)
    if config.opening:
        selected = cv2.morphologyEx(selected, cv2.MORPH_OPEN, np.ones((config.opening, config.opening), np.uint8))
    count, regions, stats, _ = cv2.connectedComponentsWithStats(selected, connectivity=8)
    return [(config.instance_class, regions == k) for k in range(1, count) if stats[k, cv2.CC_STAT_AREA]
            >= config.min_area]


def label_video(video: Path, model: Path, every: int = 2,
                config: PseudoLabelConfig = PseudoLabelConfig()) -> Iterator[tuple[int, np.ndarray, list]]:
    """(frame index, frame, instances) of every ``every``-th frame of ``video``, labelled by
    the semantic model ``model`` (an ONNX file with segstream metadata) on ONNX Runtime."""
    from segstream.engines.backends.base import labels_from_outputs, load_engine
    from segstream.engines.preprocess import Preprocessor

    engine = load_engine(model, "onnxruntime")
    preprocess = Preprocessor(engine.metadata)
    capture = cv2.VideoCapture(str(video))
    try:
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if index % every == 0:
                labels = labels_from_outputs(engine.infer(preprocess(frame)), engine.metadata)
                labels = cv2.resize(labels, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_NEAREST)
                yield index, frame, regions_as_instances(labels, config)
            index += 1
    finally:
        capture.release()
        engine.close()


def split_of(index: int, block: int, held_out: int, gap: int) -> str | None:
    """``train``, ``val`` or None (left out) for frame ``index``: each ``block`` frames end
    in ``held_out`` validation frames, the ``gap`` frames before those are left out (so no
    training frame is a validation frame's immediate neighbour), the rest train."""
    position = index % block
    if position >= block - held_out:
        return "val"
    return None if position >= block - held_out - gap else "train"


def build_video_dataset(video: Path, model: Path, root: Path, block: int = 40, held_out: int = 10, gap: int = 4,
                        every: int = 2, config: PseudoLabelConfig = PseudoLabelConfig()) -> dict[str, int]:
    """A COCO-layout dataset at ``root`` from a video, split in time (``split_of``): a
    quarter of the clip held out by default, in stretches of 0.4 s at 25 fps.

    Returns:
        images and instances per split.
    """
    splits: dict[str, list] = {"train": [], "val": []}
    for index, frame, instances in label_video(video, model, every, config):
        split = split_of(index, block, held_out, gap)
        if split:
            splits[split].append((f"{index:06d}.png", frame, instances))  # named as the pipeline names video frames
    counts = {}
    for split, images in splits.items():
        write_coco(root, split, images)
        counts[f"{split}_images"] = len(images)
        counts[f"{split}_instances"] = sum(len(i[2]) for i in images)
    logger.info("pseudo-labelled %s into %s: %s", video, root, counts)
    return counts
