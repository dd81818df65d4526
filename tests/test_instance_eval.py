"""COCO instance evaluation against pycocotools' COCOeval, on the same predictions: box and
mask AP, AP50, AP75 and AP by size agree to 1e-4."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from segstream.evaluation.instances import Instance, evaluate_instances

pycocotools = pytest.importorskip("pycocotools", reason="pip install pycocotools (the reference evaluator)")
from pycocotools import mask as mask_utils  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

H, W = 120, 160


def _instance(rng: np.random.Generator, image: int, category: int, near: tuple | None = None,
              score: float = 1.0, crowd: bool = False) -> Instance:
    if near is None:
        w, h = rng.uniform(6, 90), rng.uniform(6, 70)
        x0, y0 = rng.uniform(0, W - w), rng.uniform(0, H - h)
    else:  # a detection near a ground truth: shifted and rescaled a little
        gx0, gy0, gx1, gy1 = near
        w, h = (gx1 - gx0) * rng.uniform(0.7, 1.3), (gy1 - gy0) * rng.uniform(0.7, 1.3)
        x0 = np.clip(gx0 + rng.uniform(-6, 6), 0, W - w)
        y0 = np.clip(gy0 + rng.uniform(-6, 6), 0, H - h)
    box = (float(np.floor(x0)), float(np.floor(y0)), float(np.floor(x0 + w)), float(np.floor(y0 + h)))
    mask = np.zeros((H, W), bool)
    yy, xx = np.mgrid[0:H, 0:W]
    cx, cy, rx, ry = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
    mask[((xx - cx) / max(rx, 1)) ** 2 + ((yy - cy) / max(ry, 1)) ** 2 <= 1] = True  # an ellipse in its box
    return Instance(image, category, box, mask, score, crowd)


def _dataset(seed: int) -> tuple[list[Instance], list[Instance]]:
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for image in range(6):
        for _ in range(rng.integers(1, 6)):
            g = _instance(rng, image, int(rng.integers(1, 4)), crowd=bool(rng.random() < 0.1))
            gts.append(g)
            for _ in range(rng.integers(0, 3)):  # hits, duplicates and near misses
                dets.append(_instance(rng, image, g.category, near=g.box, score=float(rng.random())))
        for _ in range(rng.integers(0, 4)):  # false positives, some of a class no image has
            dets.append(_instance(rng, image, int(rng.integers(1, 5)), score=float(rng.random())))
    return gts, dets


def _coco(gts: list[Instance], dets: list[Instance], kind: str) -> dict[str, float]:
    def rle(mask: np.ndarray) -> dict:
        encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        encoded["counts"] = encoded["counts"].decode()
        return encoded

    images = sorted({i.image for i in gts})
    annotations = []
    for k, g in enumerate(gts, 1):
        x0, y0, x1, y1 = g.box
        annotations.append({"id": k, "image_id": g.image, "category_id": g.category, "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "area": g.size if kind == "segm" else (x1 - x0) * (y1 - y0), "iscrowd": int(g.crowd),
                            "segmentation": rle(g.mask)})
    truth = COCO()
    truth.dataset = {"images": [{"id": i, "height": H, "width": W} for i in images], "annotations": annotations,
                     "categories": [{"id": c} for c in (1, 2, 3, 4)]}
    with contextlib.redirect_stdout(io.StringIO()):
        truth.createIndex()
        results = [{"image_id": d.image, "category_id": d.category, "score": d.score,
                    **({"segmentation": rle(d.mask)} if kind == "segm" else
                       {"bbox": [d.box[0], d.box[1], d.box[2] - d.box[0], d.box[3] - d.box[1]]})} for d in dets]
        evaluator = COCOeval(truth, truth.loadRes(results), kind)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    s = evaluator.stats
    return {"ap": s[0], "ap50": s[1], "ap75": s[2], "ap_small": s[3], "ap_medium": s[4], "ap_large": s[5]}


@pytest.mark.parametrize("kind", ["bbox", "segm"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_instance_ap_matches_pycocotools(kind, seed):
    gts, dets = _dataset(seed)
    if kind == "bbox":  # COCO's box areas are the boxes' own for this comparison
        gts = [Instance(g.image, g.category, g.box, g.mask, g.score, g.crowd,
                        (g.box[2] - g.box[0]) * (g.box[3] - g.box[1])) for g in gts]
        dets = [Instance(d.image, d.category, d.box, d.mask, d.score, d.crowd,
                         (d.box[2] - d.box[0]) * (d.box[3] - d.box[1])) for d in dets]
    ours = evaluate_instances(gts, dets, kind, categories=(1, 2, 3, 4))
    reference = _coco(gts, dets, kind)
    for key, value in reference.items():
        assert ours[key] == pytest.approx(value, abs=1e-4), (key, ours[key], value)
    assert 0 < ours["ap"] < 1 and set(ours["per_class"]) == {"1", "2", "3", "4"}
