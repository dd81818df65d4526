"""Predictions the way the official Cityscapes evaluation (``cityscapesscripts``,
``csEvalPixelLevelSemanticLabeling``) reads them: one PNG per frame, at the ground truth's
full resolution, holding label ids (not train ids), named so that the evaluator's search
``CITY_SEQ_FRAME*.png`` finds exactly one file per ground truth."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from segstream.engines.cityscapes import TRAIN_ID_TO_LABEL_ID

logger = logging.getLogger(__name__)

UNLABELED = 0  # the label id for pixels a model leaves without a class (ignored in evaluation)


def _train_to_label_lut() -> np.ndarray:
    lut = np.full(256, UNLABELED, np.uint8)
    for train, label in TRAIN_ID_TO_LABEL_ID.items():
        lut[train] = label
    return lut


_LUT = _train_to_label_lut()


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Map train ids (0-18) to Cityscapes label ids; anything else becomes 0 (unlabeled)."""
    return _LUT[train_ids]


def cityscapes_result_path(root: Path, frame_name: str) -> Path:
    """``ROOT/CITY/FRAME_NAME.png`` (``frankfurt_000001_058914_leftImg8bit`` goes to
    ``ROOT/frankfurt/frankfurt_000001_058914_leftImg8bit.png``)."""
    city = frame_name.split("_", 1)[0] or "frames"
    return Path(root) / city / f"{frame_name}.png"
