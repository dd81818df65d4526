"""``segstream eval PRED_DIR GT_SOURCE``: score recorded masks against a dataset's ground
truth, the same way ``--eval`` scores them live."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2

from segstream.datasets.cityscapes import label_ids_to_train_ids
from segstream.errors import EvalError
from segstream.evaluation.ground_truth import gt_train_ids
from segstream.evaluation.metrics import ConfusionAccumulator
from segstream.evaluation.summary import eval_summary

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OfflineEval:
    """What ``segstream eval`` does.

    Attributes:
        predictions: a ``--record`` folder (its ``masks/``) or any folder of PNG label maps
            named after the frames (``<frame>.png``; found recursively).
        ground_truth: a dataset source with ground truth (``cityscapes:ROOT[:SPLIT]``,
            ``kitti-semantics:ROOT``, ``kitti360:ROOT:SEQ``).
        label_ids: the predictions hold Cityscapes label ids (``--cityscapes-results``
            output), not train ids.
        allow_missing: score the frames that have a prediction instead of failing.
    """

    predictions: Path
    ground_truth: str
    label_ids: bool = False
    allow_missing: bool = False


def prediction_files(folder: Path) -> dict[str, Path]:
    """Frame name -> PNG: the ``masks/`` folders of a record (one or per source), else
    every PNG under ``folder``.

    Raises:
        EvalError: no folder, no PNG, or two predictions for one frame name.
    """
    if not folder.is_dir():
        raise EvalError(f"{folder} is not a folder; expected a --record folder or a folder of <frame>.png masks")
    mask_dirs = [p for p in [folder / "masks", *folder.glob("*/masks")] if p.is_dir()]
    files = [f for d in mask_dirs for f in d.glob("*.png")] if mask_dirs else list(folder.rglob("*.png"))
    index: dict[str, Path] = {}
    for path in sorted(files):
        if path.stem in index:
            raise EvalError(f"two predictions for frame {path.stem}: {index[path.stem]} and {path}; keep one")
        index[path.stem] = path
    if not index:
        raise EvalError(f"{folder} holds no PNG predictions (expected masks/<frame>.png from --record)")
    return index


def evaluate(job: OfflineEval, class_names: Sequence[str]) -> dict[str, Any]:
    """Score every ground-truth frame of the source; returns ``eval_summary`` with
    ``missing`` (frames without a prediction).

    Raises:
        EvalError: a bad source, no ground truth, missing predictions (unless allowed),
            or an unreadable file.
    """
    from segstream.datasets.layouts import open_dataset
    from segstream.errors import SourceError

    try:
        source = open_dataset(job.ground_truth)
    except SourceError as exc:
        raise EvalError(f"{job.ground_truth}: {exc}") from exc
    entries = [e for e in source.entries if e.gt_path is not None]
    if not entries:
        raise EvalError(f"{job.ground_truth} has no ground truth (Cityscapes gtFine/*_labelIds.png, KITTI semantics "
                        f"semantic/, KITTI-360 semantic/)")
    predictions = prediction_files(job.predictions)
    missing = [e.path.stem for e in entries if e.path.stem not in predictions]
    if missing and not job.allow_missing:
        raise EvalError(f"{len(missing)} of {len(entries)} ground-truth frames have no prediction in "
                        f"{job.predictions} (first: {missing[0]}.png); record them all, or pass --allow-missing")
    acc = ConfusionAccumulator(len(class_names))
    for entry in entries:
        path = predictions.get(entry.path.stem)
        if path is None:
            continue
        pred = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        gt = cv2.imread(str(entry.gt_path), cv2.IMREAD_GRAYSCALE)
        if pred is None or gt is None:
            raise EvalError(f"cannot read {path if pred is None else entry.gt_path}")
        acc.add(label_ids_to_train_ids(pred) if job.label_ids else pred, gt_train_ids(gt, source.gt_kind))
    summary = eval_summary({"gt": acc}, class_names)
    summary["missing"] = missing
    return summary
