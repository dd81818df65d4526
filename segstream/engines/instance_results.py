"""From an instance model's outputs to what the pipeline publishes: the detections in
frame pixels, an instance-id map and a semantic mask at frame resolution.

A detection's M x M mask (its probability within its box) is resized to the box in the
frame and thresholded; instances are painted from the lowest score up, so where two
overlap the better one owns the pixel. Instance ids run 1..count in score order (0: no
instance); the semantic mask holds each instance's class (``class_id - 1``, an index into
the metadata's class names) and the ignore index elsewhere.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from segstream.engines.metadata import ModelMetadata, OutputKind
from segstream.errors import ModelError

logger = logging.getLogger(__name__)

MAX_INSTANCES = 65_535  # instance ids are uint16


@dataclass(frozen=True)
class Detection:
    """One instance in a frame.

    Attributes:
        id: 1..count, best score first (the value of its pixels in the id map).
        class_id: the model's class (1-based; ``label`` names it).
        label: the class's name.
        score: the detection's score.
        box: (x0, y0, x1, y1) in frame pixels.
    """

    id: int
    class_id: int
    label: str
    score: float
    box: tuple[float, float, float, float]

    def to_json(self) -> dict[str, Any]:
        """The wire form (``meta.instances`` items)."""
        return {"id": self.id, "class_id": self.class_id, "label": self.label, "score": round(self.score, 4),
                "box": [round(v, 2) for v in self.box]}


def instance_thresholds(metadata: ModelMetadata) -> tuple[float, float]:
    """(score threshold, mask threshold) an instance model's metadata asks for (``extra``;
    0.5 and 0.5 where it names none).

    Raises:
        ModelError: a threshold outside [0, 1].
    """
    values = tuple(metadata.extra.get(key, 0.5) for key in ("score_threshold", "mask_threshold"))
    for key, value in zip(("score_threshold", "mask_threshold"), values):
        if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise ModelError(f"model {metadata.name}: metadata {key} must be a number in [0, 1], found {value!r}")
    return float(values[0]), float(values[1])


def _output(outputs: dict[str, np.ndarray], metadata: ModelMetadata, kind: OutputKind) -> np.ndarray:
    spec = metadata.output(kind)
    if spec is None:
        raise ValueError(f"model {metadata.name} has no {kind.value} output (outputs: {metadata.outputs})")
    return outputs[spec.name][0]


def _paste(mask: np.ndarray, box: tuple[float, float, float, float], height: int, width: int,
           threshold: float) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """A detection's M x M mask resized to its box in the frame and thresholded: the
    integer region (x0, y0, x1, y1) and the boolean mask over it, or None for an empty box."""
    x0, y0, x1, y1 = box
    left, top = int(np.floor(x0)), int(np.floor(y0))
    right, bottom = min(max(int(np.ceil(x1)), left + 1), width), min(max(int(np.ceil(y1)), top + 1), height)
    if right <= left or bottom <= top:
        return None
    region = cv2.resize(mask.astype(np.float32), (right - left, bottom - top), interpolation=cv2.INTER_LINEAR)
    return (left, top, right, bottom), region >= threshold


def detection_instances(outputs: dict[str, np.ndarray], metadata: ModelMetadata, image: Any,
                        frame_hw: tuple[int, int]) -> list[Any]:
    """Every detection of one image's outputs as an ``evaluation.instances.Instance`` (box
    in frame pixels, its mask over the box's pixels from the box's corner, the model's class
    id), for COCO evaluation: no score threshold, and masks left overlapping, as COCO scores
    them."""
    from segstream.evaluation.instances import Instance

    height, width = frame_hw
    _, mask_threshold = instance_thresholds(metadata)
    count = int(_output(outputs, metadata, OutputKind.INSTANCE_COUNT))
    boxes = _output(outputs, metadata, OutputKind.INSTANCE_BOXES)[:count].astype(np.float64)
    sx, sy = width / metadata.input_width, height / metadata.input_height
    found = []
    for box, score, cls, mask in zip(boxes * (sx, sy, sx, sy), _output(outputs, metadata, OutputKind.INSTANCE_SCORES),
                                     _output(outputs, metadata, OutputKind.INSTANCE_CLASSES),
                                     _output(outputs, metadata, OutputKind.INSTANCE_MASKS)):
        pasted = _paste(mask, tuple(box), height, width, mask_threshold)
        region, origin = (pasted[1], pasted[0][:2]) if pasted is not None else (np.zeros((1, 1), bool), (0, 0))
        found.append(Instance(image, int(cls), tuple(float(v) for v in box), region, float(score), origin=origin))
    return found


def instances_from_outputs(outputs: dict[str, np.ndarray], metadata: ModelMetadata, frame_hw: tuple[int, int],
                           score_threshold: float = 0.5, mask_threshold: float = 0.5
                           ) -> tuple[list[Detection], np.ndarray, np.ndarray]:
    """(detections, uint16 instance ids, uint8 semantic mask) for one image's outputs.

    Args:
        outputs: the engine's outputs (batch of one).
        metadata: the model's metadata (input size, class names, ignore index).
        frame_hw: the frame's (height, width): boxes and maps are in frame pixels.
        score_threshold: detections scoring below are left out.
        mask_threshold: a pixel belongs to a detection from this mask probability on.
    """
    height, width = frame_hw
    count = int(_output(outputs, metadata, OutputKind.INSTANCE_COUNT))
    boxes = _output(outputs, metadata, OutputKind.INSTANCE_BOXES)[:count].astype(np.float64)
    scores = _output(outputs, metadata, OutputKind.INSTANCE_SCORES)[:count].astype(np.float64)
    classes = _output(outputs, metadata, OutputKind.INSTANCE_CLASSES)[:count].astype(np.int64)
    masks = _output(outputs, metadata, OutputKind.INSTANCE_MASKS)[:count]
    keep = np.flatnonzero((scores >= score_threshold) & (classes >= 1) & (classes <= len(metadata.class_names)))
    keep = keep[np.argsort(-scores[keep], kind="stable")][:MAX_INSTANCES]
    sx, sy = width / metadata.input_width, height / metadata.input_height
    ids = np.zeros((height, width), np.uint16)
    semantic = np.full((height, width), metadata.ignore_index, np.uint8)
    detections = []
    for rank, k in enumerate(keep, 1):
        x0, y0, x1, y1 = boxes[k] * (sx, sy, sx, sy)
        x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))
        detections.append(Detection(rank, int(classes[k]), metadata.class_names[classes[k] - 1], float(scores[k]),
                                    (x0, y0, x1, y1)))
    for detection, k in reversed(list(zip(detections, keep))):  # lowest score first: the best paints last
        pasted = _paste(masks[k], detection.box, height, width, mask_threshold)
        if pasted is None:
            continue
        (left, top, right, bottom), region = pasted
        ids[top:bottom, left:right][region] = detection.id
        semantic[top:bottom, left:right][region] = detection.class_id - 1
    return detections, ids, semantic
