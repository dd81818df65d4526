"""Segmentation scores from a confusion matrix.

The matrix has one row per class (the ground truth) and one column per class plus a last
column, ``none``, for predictions outside the scored classes (a model's "ignore" output).
Ground-truth pixels outside the scored classes (the ignore label 255) are left out
entirely, as the Cityscapes evaluation does: they count neither for nor against any class.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import cv2
import numpy as np

logger = logging.getLogger(__name__)


def confusion(pred: np.ndarray, target: np.ndarray, classes: int) -> np.ndarray:
    """Confusion matrix of one label map against its ground truth (same shape).

    Args:
        pred: predicted class ids; ids outside ``[0, classes)`` count as ``none``.
        target: ground-truth class ids; ids outside ``[0, classes)`` are ignored.
        classes: number of scored classes.

    Returns:
        ``(classes, classes + 1)`` int64 matrix: rows ground truth, columns prediction.

    Raises:
        ValueError: the shapes differ.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction is {pred.shape}, ground truth {target.shape}; compare them at one size "
                         f"(accumulate() resizes the prediction to the ground truth)")
    target = target.astype(np.int64, copy=False).ravel()
    pred = pred.astype(np.int64, copy=False).ravel()
    valid = (target >= 0) & (target < classes)
    pred = np.where((pred >= 0) & (pred < classes), pred, classes)[valid]
    counts = np.bincount(target[valid] * (classes + 1) + pred, minlength=classes * (classes + 1))
    return counts.reshape(classes, classes + 1)


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def _mean(values: Sequence[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return sum(defined) / len(defined) if defined else math.nan


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)


def scores(matrix: np.ndarray, class_names: Sequence[str], categories: Sequence[str] | None = None) -> dict[str, Any]:
    """Every score of a confusion matrix, JSON-ready (``None`` where undefined).

    Per class: IoU = TP / (TP + FP + FN), precision = TP / (TP + FP), recall = TP / (TP + FN),
    F1, and the pixel counts; a class absent from both the ground truth and the
    predictions has no IoU and is left out of the mean (mIoU), as in the Cityscapes
    evaluation. With ``categories`` (one per class, e.g. Cityscapes' flat, construction...),
    category IoU merges the classes of each category.

    Args:
        matrix: ``(C, C + 1)`` matrix from ``confusion``.
        class_names: C names.
        categories: C category names, or None.

    Returns:
        ``pixel_accuracy``, ``miou``, ``mean_precision``, ``mean_recall``, ``mean_f1``,
        ``pixels``, ``classes`` {name: {iou, precision, recall, f1, gt_pixels,
        pred_pixels}}, and with categories ``categories`` {name: iou} and ``category_miou``.
    """
    m = matrix.astype(np.float64)
    n = m.shape[0]
    if m.shape != (n, n + 1) or len(class_names) != n:
        raise ValueError(f"expected a ({len(class_names)}, {len(class_names) + 1}) matrix, found {m.shape}")
    tp = np.diag(m[:, :n])
    gt = m.sum(1)  # includes predictions of "none"
    pred = m[:, :n].sum(0)
    per_class: dict[str, dict[str, Any]] = {}
    ious, precisions, recalls, f1s = [], [], [], []
    for c, name in enumerate(class_names):
        iou = _ratio(tp[c], gt[c] + pred[c] - tp[c])
        precision, recall = _ratio(tp[c], pred[c]), _ratio(tp[c], gt[c])
        f1 = math.nan if math.isnan(precision) or math.isnan(recall) else _ratio(2 * tp[c], gt[c] + pred[c])
        ious.append(iou), precisions.append(precision), recalls.append(recall), f1s.append(f1)
        per_class[name] = {"iou": _json_number(iou), "precision": _json_number(precision),
                           "recall": _json_number(recall), "f1": _json_number(f1), "gt_pixels": int(gt[c]),
                           "pred_pixels": int(pred[c])}
    out: dict[str, Any] = {
        "pixels": int(m.sum()),
        "pixel_accuracy": _json_number(_ratio(tp.sum(), m.sum())),
        "miou": _json_number(_mean(ious)),
        "mean_precision": _json_number(_mean(precisions)),
        "mean_recall": _json_number(_mean(recalls)),
        "mean_f1": _json_number(_mean(f1s)),
        "classes": per_class,
    }
    if categories is not None:
        category_iou = {}
        for category in dict.fromkeys(categories):
            members = [c for c in range(n) if categories[c] == category]
            hit = m[np.ix_(members, members)].sum()
            category_iou[category] = _ratio(hit, m[members].sum() + m[:, members].sum() - hit)
        out["categories"] = {k: _json_number(v) for k, v in category_iou.items()}
        out["category_miou"] = _json_number(_mean(list(category_iou.values())))
    return out


@dataclass
class ConfusionAccumulator:
    """A running confusion matrix over many frames.

    Attributes:
        classes: number of scored classes.
        matrix: ``(classes, classes + 1)`` counts so far.
        frames: frames added.
    """

    classes: int
    matrix: np.ndarray = field(init=False)
    frames: int = 0

    def __post_init__(self) -> None:
        self.matrix = np.zeros((self.classes, self.classes + 1), np.int64)

    def add(self, pred: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Add one frame, compared at the ground truth's resolution (the prediction is
        resized with nearest neighbour when the sizes differ); returns its own matrix."""
        if pred.shape != target.shape:
            pred = cv2.resize(pred.astype(np.uint8, copy=False), (target.shape[1], target.shape[0]),
                              interpolation=cv2.INTER_NEAREST)
        frame = confusion(pred, target, self.classes)
        self.matrix += frame
        self.frames += 1
        return frame

    def merge(self, other: "ConfusionAccumulator") -> None:
        """Add another accumulator's counts."""
        self.matrix += other.matrix
        self.frames += other.frames

    def to_json(self) -> dict[str, Any]:
        """``{"frames": N, "matrix": [[...], ...]}``."""
        return {"frames": self.frames, "matrix": self.matrix.tolist()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ConfusionAccumulator":
        """The accumulator ``to_json`` described."""
        matrix = np.asarray(data["matrix"], np.int64)
        acc = cls(matrix.shape[0])
        acc.matrix[...] = matrix
        acc.frames = int(data.get("frames", 0))
        return acc
