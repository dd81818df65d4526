"""Instance evaluation of a stream, frame by frame: each frame's detections (from the
published instance ids) and its ground truth (Cityscapes instance ids) are kept as crops,
and COCO box and mask AP are computed over everything seen so far."""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from segstream.datasets.instances import instances_of_ids, mask_extent
from segstream.evaluation.instances import Instance, evaluate_instances

logger = logging.getLogger(__name__)


def _crop(mask: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """The mask cut to its extent and that extent's (x, y) origin (an empty mask: one
    empty pixel)."""
    extent = mask_extent(mask)
    if extent is None:
        return np.zeros((1, 1), bool), (0, 0)
    x0, y0, x1, y1 = extent
    return mask[y0:y1, x0:x1].copy(), (x0, y0)


class InstanceStreamEval:
    """Detections and ground truth of the frames seen, and their AP.

    Classes are matched by name (the model's labels against Cityscapes' instance classes
    named as COCO names them).

    Args:
        category: class name -> category id, to share between several of these.
    """

    def __init__(self, category: dict[str, int] | None = None) -> None:
        self.truth: list[Instance] = []
        self.found: list[Instance] = []
        self.category = {} if category is None else category  # class name -> id (may be shared)
        self.frames = 0

    def _id(self, name: str) -> int:
        return self.category.setdefault(name, len(self.category) + 1)

    def add(self, image: Any, ids: np.ndarray, detections: Sequence[dict[str, Any]], gt_ids: np.ndarray) -> None:
        """One frame: its published instance ids and ``meta.instances``, and its ground
        truth (``label_id * 1000 + k`` per pixel; values below 1000 are no instance)."""
        if gt_ids.shape != ids.shape:
            import cv2

            gt_ids = cv2.resize(gt_ids, (ids.shape[1], ids.shape[0]), interpolation=cv2.INTER_NEAREST)
        self.frames += 1
        for truth in instances_of_ids(gt_ids):
            crop, origin = _crop(truth.mask)
            self.truth.append(Instance(image, self._id(truth.name), truth.box, crop, origin=origin))
        for item in detections:  # one whose pixels all went to better ones still counts (its box)
            crop, origin = _crop(ids == int(item["id"]))
            self.found.append(Instance(image, self._id(str(item["label"])), tuple(item["box"]), crop,
                                       float(item["score"]), origin=origin))

    def summary(self) -> dict[str, Any]:
        """``{"frames", "bbox": {...}, "segm": {...}}`` over the ground truth's classes."""
        names = {v: k for k, v in self.category.items()}
        classes = sorted({i.category for i in self.truth})
        out: dict[str, Any] = {"frames": self.frames}
        for kind in ("bbox", "segm"):
            out[kind] = evaluate_instances(self.truth, self.found, kind, categories=classes, names=names)
        return out
