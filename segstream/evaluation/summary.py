"""The ``eval`` section of stats.json and ``segstream eval``'s output, and their table."""

from __future__ import annotations

import logging
from typing import Any, Sequence

from segstream.datasets.cityscapes import CLASS_NAMES, TRAIN_ID_CATEGORY
from segstream.evaluation.metrics import ConfusionAccumulator, scores

logger = logging.getLogger(__name__)


def categories_for(class_names: Sequence[str]) -> tuple[str, ...] | None:
    """Cityscapes categories of the classes, when they are Cityscapes' 19 train ids."""
    return TRAIN_ID_CATEGORY if tuple(class_names) == CLASS_NAMES else None


def eval_summary(per_source: dict[str, ConfusionAccumulator], class_names: Sequence[str]) -> dict[str, Any]:
    """Scores of every source and of all together, with the total confusion matrix.

    Returns:
        ``{"frames", "class_names", "ignore": "...", <scores of all sources>, "confusion":
        {"rows": "ground truth", "columns": "prediction (last: none)", "matrix"},
        "per_source": {sid: {"frames", <scores>}}}``.
    """
    categories = categories_for(class_names)
    total = ConfusionAccumulator(len(class_names))
    for acc in per_source.values():
        total.merge(acc)
    return {
        "frames": total.frames,
        "class_names": list(class_names),
        "ignore": "ground-truth pixels outside the scored classes (the dataset's ignore labels) are left out",
        **scores(total.matrix, class_names, categories),
        "confusion": {"rows": "ground truth", "columns": "prediction (last column: none of the classes)",
                      "matrix": total.matrix.tolist()},
        "per_source": {sid: {"frames": acc.frames, **scores(acc.matrix, class_names, categories)}
                       for sid, acc in per_source.items()},
    }


def _fmt(value: float | None) -> str:
    return "    -" if value is None else f"{value:5.3f}"


def format_scores(summary: dict[str, Any]) -> str:
    """A terminal table: per class IoU, precision, recall and F1, then the means and the
    category IoUs."""
    lines = [f"evaluation over {summary['frames']} frame(s), {summary['pixels']:,} pixels",
             "  class              IoU   prec  recall    F1"]
    for name, c in summary["classes"].items():
        if c["gt_pixels"] or c["pred_pixels"]:
            lines.append(f"  {name:<16} {_fmt(c['iou'])}  {_fmt(c['precision'])}  {_fmt(c['recall'])}  {_fmt(c['f1'])}")
    lines.append(f"  mIoU {_fmt(summary['miou'])}   pixel accuracy {_fmt(summary['pixel_accuracy'])}   "
                 f"mean F1 {_fmt(summary['mean_f1'])}")
    if "categories" in summary:
        cats = "  ".join(f"{k} {_fmt(v)}" for k, v in summary["categories"].items())
        lines.append(f"  categories: {cats}   (mean {_fmt(summary['category_miou'])})")
    return "\n".join(lines)
