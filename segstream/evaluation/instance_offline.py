"""``segstream eval --task instances``: a recorded run of an instance model scored against
COCO-layout or Cityscapes instance ground truth (COCO box and mask AP).

The predictions are what ``--record`` wrote: ``instances.jsonl`` (each frame's detections)
and ``instances/<frame>.png`` (16-bit instance ids). Each detection's mask is its pixels in
the id map, so masks do not overlap (the pipeline resolved overlaps by score) and only
detections above the model's score threshold are there: AP is that of the published
results, which can be below the AP of the raw detections. A frame is matched to its
ground-truth image by name (the image file's stem); classes are matched by name.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

from segstream.datasets.instances import AnnotatedImage, open_instances
from segstream.errors import EvalError, ModelError
from segstream.evaluation.instances import Instance, evaluate_instances

logger = logging.getLogger(__name__)

INSTANCES_NAME = "instances.jsonl"  # each frame's detections in a record folder (the masks sink writes it)


@dataclass(frozen=True)
class InstanceEval:
    """What to score.

    Attributes:
        predictions: a ``--record`` folder of an instance model's run.
        ground_truth: ``coco:ROOT[:SPLIT]`` or ``cityscapes:ROOT[:SPLIT]``.
        allow_missing: score only the images that have a prediction.
    """

    predictions: Path
    ground_truth: str
    allow_missing: bool = False


def _records(folder: Path) -> dict[str, dict[str, Any]]:
    path = folder / INSTANCES_NAME
    if not path.is_file():
        raise EvalError(f"{folder} has no {INSTANCES_NAME}; record an instance model's run with --record "
                        f"(segstream run --model maskrcnn-... --record {folder})")
    records = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(line)
            records[str(record["frame"])] = record
        except (ValueError, KeyError, TypeError) as exc:
            raise EvalError(f"{path}:{number} is not a detections record ({exc})") from None
    return records


def _predicted(folder: Path, frame: str, record: dict[str, Any], size: tuple[int, int],
               category: dict[str, int]) -> list[Instance]:
    path = folder / "instances" / f"{frame}.png"
    ids = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if ids is None or ids.ndim != 2:
        raise EvalError(f"cannot read {path} as a 16-bit instance-id image")
    sy, sx = size[0] / ids.shape[0], size[1] / ids.shape[1]
    if ids.shape != size:
        ids = cv2.resize(ids, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    found = []
    for item in record.get("instances", []):
        x0, y0, x1, y1 = (float(v) for v in item["box"])
        label = str(item["label"])
        found.append(Instance(frame, category.setdefault(label, len(category) + 1), (x0 * sx, y0 * sy, x1 * sx, y1 * sy),
                              ids == int(item["id"]), float(item["score"])))
    return found


def _truth(image: AnnotatedImage, frame: str, category: dict[str, int]) -> tuple[list[Instance], tuple[int, int]]:
    try:
        annotations = image.annotations()
    except (ModelError, ValueError) as exc:
        raise EvalError(f"ground truth of {image.path}: {exc}") from None
    size = annotations[0].mask.shape if annotations else tuple(cv2.imread(str(image.path)).shape[:2])
    return [Instance(frame, category.setdefault(a.name, len(category) + 1), a.box, a.mask, crowd=a.crowd)
            for a in annotations], size  # type: ignore[return-value]


def evaluate_recorded_instances(job: InstanceEval) -> dict[str, Any]:
    """Box and mask AP (COCO's protocol) of a recorded run against its ground truth.

    Returns:
        ``{"images", "missing", "bbox": {...}, "segm": {...}}``, each of the two with
        ``ap``, ``ap50``, ``ap75``, ``ap_small/medium/large`` and ``per_class``.

    Raises:
        EvalError: no predictions, unreadable files, or images without a prediction
            (unless ``allow_missing``).
    """
    try:
        images = open_instances(job.ground_truth)
    except ModelError as exc:
        raise EvalError(str(exc)) from None
    records = _records(job.predictions)
    category: dict[str, int] = {}
    truth: list[Instance] = []
    found: list[Instance] = []
    missing = []
    for image in images:
        frame = image.path.stem
        if frame not in records:
            missing.append(frame)
            continue
        gts, size = _truth(image, frame, category)
        truth += gts
        found += _predicted(job.predictions, frame, records[frame], size, category)
    if missing and not job.allow_missing:
        raise EvalError(f"{len(missing)} of {len(images)} ground-truth images have no prediction in "
                        f"{job.predictions} (first: {missing[0]}); pass --allow-missing to score the others")
    if len(missing) == len(images):
        raise EvalError(f"no frame of {job.predictions} matches an image of {job.ground_truth} by name")
    names = {v: k for k, v in category.items()}
    summary: dict[str, Any] = {"images": len(images) - len(missing), "missing": missing}
    for kind in ("bbox", "segm"):
        summary[kind] = evaluate_instances(truth, found, kind, names=names,
                                           categories=sorted({i.category for i in truth}))
    return summary


def format_instance_scores(summary: dict[str, Any]) -> str:
    """The summary as a table: overall figures, then AP per class."""
    lines = [f"{summary['images']} images", f"{'':6}{'AP':>7}{'AP50':>7}{'AP75':>7}{'APs':>7}{'APm':>7}{'APl':>7}"]
    for kind, title in (("bbox", "box"), ("segm", "mask")):
        s = summary[kind]
        lines.append(f"{title:6}" + "".join(f"{s[k]:7.3f}" for k in ("ap", "ap50", "ap75", "ap_small", "ap_medium",
                                                                       "ap_large")))
    lines.append(f"{'class':16}{'box AP':>8}{'mask AP':>8}")
    for name, ap in summary["bbox"]["per_class"].items():
        lines.append(f"{name:16}{ap:8.3f}{summary['segm']['per_class'].get(name, -1.0):8.3f}")
    return "\n".join(lines)
