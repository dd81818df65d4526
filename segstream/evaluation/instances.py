"""COCO-style instance evaluation: box and mask AP, AP50, AP75, per class and by size.

The protocol is COCO's (``cocoapi``'s ``COCOeval``): ten IoU thresholds 0.50:0.05:0.95,
101 recall points, at most 100 detections per image, detections matched greedily by score
to the best unmatched ground truth, crowd regions and out-of-range areas ignored rather
than counted as misses, precision made monotonic before it is sampled. Computed here in
numpy; ``tests/test_instance_eval.py`` checks it against pycocotools to 1e-4.

Boxes are (x0, y0, x1, y1) in pixels; masks are boolean (H, W) arrays of the image.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from segstream.datasets.instances import mask_extent

logger = logging.getLogger(__name__)

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
MAX_DETECTIONS = 100
AREA_RANGES = {"all": (0.0, 1e10), "small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2),
               "large": (96.0 ** 2, 1e10)}


@dataclass(frozen=True)
class Instance:
    """One ground-truth instance or detection.

    Attributes:
        image: the image it belongs to.
        category: its class id.
        box: (x0, y0, x1, y1) in pixels.
        mask: its boolean mask over the image (mask AP), or None; or over a region of
            the image only, from ``origin`` on (a long stream keeps each instance's crop).
        score: the detection's score (ground truth: 1).
        crowd: a ground-truth crowd region (matched without being counted).
        area: its area for the size ranges (default: the mask's pixels, else the box's).
        origin: (x, y) of the image pixel the mask's first pixel covers.
    """

    image: Any
    category: int
    box: tuple[float, float, float, float]
    mask: np.ndarray | None = None
    score: float = 1.0
    crowd: bool = False
    area: float | None = None
    origin: tuple[int, int] = (0, 0)

    @property
    def size(self) -> float:
        if self.area is not None:
            return float(self.area)
        if self.mask is not None:
            return float(np.count_nonzero(self.mask))
        x0, y0, x1, y1 = self.box
        return float((x1 - x0) * (y1 - y0))


def _box_iou(dets: Sequence[Instance], gts: Sequence[Instance]) -> np.ndarray:
    d = np.array([i.box for i in dets], np.float64).reshape(-1, 4)
    g = np.array([i.box for i in gts], np.float64).reshape(-1, 4)
    crowd = np.array([i.crowd for i in gts], bool)
    w = np.clip(np.minimum(d[:, None, 2], g[None, :, 2]) - np.maximum(d[:, None, 0], g[None, :, 0]), 0, None)
    h = np.clip(np.minimum(d[:, None, 3], g[None, :, 3]) - np.maximum(d[:, None, 1], g[None, :, 1]), 0, None)
    inter = w * h
    area_d = (d[:, 2] - d[:, 0]) * (d[:, 3] - d[:, 1])
    area_g = (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1])
    union = np.where(crowd[None, :], area_d[:, None], area_d[:, None] + area_g[None, :] - inter)
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _extent(mask: np.ndarray, origin: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) in image pixels bounding the mask's pixels, or None if it has none."""
    extent = mask_extent(mask)
    if extent is None:
        return None
    (x0, y0, x1, y1), (x, y) = extent, origin
    return y0 + y, y1 + y, x0 + x, x1 + x


def _mask_iou(dets: Sequence[Instance], gts: Sequence[Instance]) -> np.ndarray:
    """Mask IoU of every pair, each intersection counted only where the two masks' extents
    overlap (no (N, H x W) matrices: a 2-megapixel frame with a hundred detections costs
    what the overlapping pixels cost)."""
    out = np.zeros((len(dets), len(gts)))
    if not dets or not gts:
        return out
    d_masks = [np.asarray(i.mask, bool) for i in dets]
    g_masks = [np.asarray(i.mask, bool) for i in gts]
    d_ext = [_extent(m, i.origin) for m, i in zip(d_masks, dets)]
    g_ext = [_extent(m, i.origin) for m, i in zip(g_masks, gts)]
    d_area = [float(np.count_nonzero(m)) for m in d_masks]
    g_area = [float(np.count_nonzero(m)) for m in g_masks]
    for di, (det, dm, de) in enumerate(zip(dets, d_masks, d_ext)):
        for gi, (gt, gm, ge) in enumerate(zip(gts, g_masks, g_ext)):
            inter = 0.0
            if de is not None and ge is not None:
                y0, y1, x0, x1 = max(de[0], ge[0]), min(de[1], ge[1]), max(de[2], ge[2]), min(de[3], ge[3])
                if y1 > y0 and x1 > x0:
                    (dx, dy), (gx, gy) = det.origin, gt.origin
                    inter = float(np.count_nonzero(dm[y0 - dy:y1 - dy, x0 - dx:x1 - dx]
                                                   & gm[y0 - gy:y1 - gy, x0 - gx:x1 - gx]))
            union = d_area[di] if gt.crowd else d_area[di] + g_area[gi] - inter
            out[di, gi] = inter / union if union > 0 else 0.0
    return out


def _match(dets: list[Instance], gts: list[Instance], iou: np.ndarray, area: tuple[float, float]) -> dict[str, Any]:
    """COCO's evaluateImg for one image, category and area range (dets sorted, capped)."""
    gt_ignore = np.array([g.crowd or not area[0] <= g.size <= area[1] for g in gts], bool)
    order = np.argsort(gt_ignore, kind="mergesort")  # the ones counted first
    gts = [gts[k] for k in order]
    gt_ignore = gt_ignore[order]
    iou = iou[:, order] if iou.size else iou
    crowd = np.array([g.crowd for g in gts], bool)
    t = len(IOU_THRESHOLDS)
    gt_matched = np.zeros((t, len(gts)), bool)
    dt_matched = np.zeros((t, len(dets)), bool)
    dt_ignore = np.zeros((t, len(dets)), bool)
    for ti, threshold in enumerate(IOU_THRESHOLDS):
        for di in range(len(dets)):
            best, match = min(threshold, 1 - 1e-10), -1
            for gi in range(len(gts)):
                if gt_matched[ti, gi] and not crowd[gi]:
                    continue
                if match > -1 and not gt_ignore[match] and gt_ignore[gi]:
                    break  # counted ground truth exhausted; the rest is ignored
                if iou[di, gi] < best:
                    continue
                best, match = iou[di, gi], gi
            if match == -1:
                continue
            dt_ignore[ti, di] = gt_ignore[match]
            dt_matched[ti, di] = True
            gt_matched[ti, match] = True
    outside = np.array([not area[0] <= d.size <= area[1] for d in dets], bool)
    dt_ignore |= ~dt_matched & outside[None, :]
    return {"scores": np.array([d.score for d in dets]), "matched": dt_matched, "ignored": dt_ignore,
            "counted_gt": int((~gt_ignore).sum())}


def _precision(results: list[dict[str, Any]]) -> np.ndarray:
    """COCO's accumulate for one category and area range: (T, R) precision, -1 if no GT."""
    counted = sum(r["counted_gt"] for r in results)
    out = -np.ones((len(IOU_THRESHOLDS), len(RECALL_POINTS)))
    if counted == 0:
        return out
    scores = np.concatenate([r["scores"] for r in results]) if results else np.zeros(0)
    order = np.argsort(-scores, kind="mergesort")
    matched = np.concatenate([r["matched"] for r in results], axis=1)[:, order]
    ignored = np.concatenate([r["ignored"] for r in results], axis=1)[:, order]
    tps = np.cumsum(matched & ~ignored, axis=1).astype(np.float64)
    fps = np.cumsum(~matched & ~ignored, axis=1).astype(np.float64)
    for t in range(len(IOU_THRESHOLDS)):
        tp, fp = tps[t], fps[t]
        recall = tp / counted
        precision = tp / (tp + fp + np.spacing(1))
        for k in range(len(precision) - 1, 0, -1):  # monotonic from the right
            precision[k - 1] = max(precision[k - 1], precision[k])
        index = np.searchsorted(recall, RECALL_POINTS, side="left")
        q = np.zeros(len(RECALL_POINTS))
        valid = index < len(precision)
        q[valid] = precision[index[valid]]
        out[t] = q
    return out


def evaluate_instances(ground_truth: Iterable[Instance], detections: Iterable[Instance], kind: str = "bbox",
                       categories: Sequence[int] | None = None,
                       names: dict[int, str] | None = None) -> dict[str, Any]:
    """AP (0.50:0.95), AP50, AP75 and AP by size, overall and per category.

    Args:
        ground_truth: the annotated instances.
        detections: the detections (at most ``MAX_DETECTIONS`` per image count, best first).
        kind: ``bbox`` (box IoU) or ``segm`` (mask IoU; every instance needs a mask).
        categories: the categories evaluated (default: those of the ground truth and the
            detections).
        names: category id -> name, for the per-class table.

    Returns:
        ``{"ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "per_class": {name: ap}}``,
        -1 where there is nothing to score (COCO's convention).
    """
    if kind not in ("bbox", "segm"):
        raise ValueError(f"kind must be 'bbox' or 'segm', found {kind!r}")
    gts: dict[tuple[Any, int], list[Instance]] = defaultdict(list)
    dts: dict[tuple[Any, int], list[Instance]] = defaultdict(list)
    for g in ground_truth:
        gts[(g.image, g.category)].append(g)
    for d in detections:
        dts[(d.image, d.category)].append(d)
    images = sorted({key[0] for key in [*gts, *dts]}, key=str)
    cats = sorted(categories) if categories is not None else sorted({key[1] for key in [*gts, *dts]})
    iou_of = _mask_iou if kind == "segm" else _box_iou
    precision = {}
    for area_name, area in AREA_RANGES.items():
        for cat in cats:
            results = []
            for image in images:
                g, d = gts.get((image, cat), []), dts.get((image, cat), [])
                if not g and not d:
                    continue
                d = sorted(d, key=lambda i: -i.score)[:MAX_DETECTIONS]
                results.append(_match(d, g, iou_of(d, g), area))
            precision[(area_name, cat)] = _precision(results)

    def mean(values: list[np.ndarray]) -> float:
        stacked = np.concatenate([v.reshape(-1) for v in values]) if values else np.zeros(0)
        valid = stacked[stacked > -1]
        return float(valid.mean()) if valid.size else -1.0

    all_cats = [precision[("all", c)] for c in cats]
    summary = {
        "ap": mean(all_cats),
        "ap50": mean([p[0] for p in all_cats]),
        "ap75": mean([p[5] for p in all_cats]),
        **{f"ap_{a}": mean([precision[(a, c)] for c in cats]) for a in ("small", "medium", "large")},
        "per_class": {(names or {}).get(c, str(c)): mean([precision[("all", c)]]) for c in cats},
    }
    return summary
