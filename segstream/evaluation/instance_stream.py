"""Instance evaluation of a stream, frame by frame: each frame's detections (from the
published instance ids) and its ground truth (Cityscapes instance ids) are kept as crops,
and COCO box and mask AP are computed over everything seen so far."""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from segstream.datasets.instances import CITYSCAPES_INSTANCE_CLASSES
from segstream.evaluation.instances import Instance, evaluate_instances

logger = logging.getLogger(__name__)


def _crop(mask: np.ndarray) -> tuple[np.ndarray, tuple[int, int], tuple[float, float, float, float]] | None:
    """The mask cut to its extent, that extent's (x, y) origin and its box; None if empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not rows.size:
        return None
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return mask[y0:y1, x0:x1].copy(), (x0, y0), (float(x0), float(y0), float(x1), float(y1))


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
        for value in np.unique(gt_ids[gt_ids >= 1000]):
            name = CITYSCAPES_INSTANCE_CLASSES.get(int(value) // 1000)
            cut = _crop(gt_ids == value) if name else None
            if cut is not None:
                self.truth.append(Instance(image, self._id(name), cut[2], cut[0], origin=cut[1]))
        for item in detections:  # one whose pixels all went to better ones still counts (its box)
            cut = _crop(ids == int(item["id"])) or (np.zeros((1, 1), bool), (0, 0), None)
            self.found.append(Instance(image, self._id(str(item["label"])), tuple(item["box"]), cut[0],
                                       float(item["score"]), origin=cut[1]))

    def summary(self) -> dict[str, Any]:
        """``{"frames", "bbox": {...}, "segm": {...}}`` over the ground truth's classes."""
        names = {v: k for k, v in self.category.items()}
        classes = sorted({i.category for i in self.truth})
        out: dict[str, Any] = {"frames": self.frames}
        for kind in ("bbox", "segm"):
            out[kind] = evaluate_instances(self.truth, self.found, kind, categories=classes, names=names)
        return out
