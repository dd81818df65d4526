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


def _output(outputs: dict[str, np.ndarray], metadata: ModelMetadata, kind: OutputKind) -> np.ndarray:
    spec = metadata.output(kind)
    if spec is None:
        raise ValueError(f"model {metadata.name} has no {kind.value} output (outputs: {metadata.outputs})")
    return outputs[spec.name][0]


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
        x0, y0, x1, y1 = detection.box
        left, top = int(np.floor(x0)), int(np.floor(y0))
        right, bottom = max(int(np.ceil(x1)), left + 1), max(int(np.ceil(y1)), top + 1)
        right, bottom = min(right, width), min(bottom, height)
        if right <= left or bottom <= top:
            continue
        region = cv2.resize(masks[k].astype(np.float32), (right - left, bottom - top),
                            interpolation=cv2.INTER_LINEAR) >= mask_threshold
        ids[top:bottom, left:right][region] = detection.id
        semantic[top:bottom, left:right][region] = detection.class_id - 1
    return detections, ids, semantic
