"""Predictions the way the official Cityscapes evaluation (``cityscapesscripts``,
``csEvalPixelLevelSemanticLabeling``) reads them: one PNG per frame, at the ground truth's
full resolution, holding label ids (not train ids), named so that the evaluator's search
``CITY_SEQ_FRAME*.png`` finds exactly one file per ground truth (train ids become label ids
with ``engines.cityscapes.train_ids_to_label_ids``)."""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def cityscapes_result_path(root: Path, frame_name: str) -> Path:
    """``ROOT/CITY/FRAME_NAME.png`` (``frankfurt_000001_058914_leftImg8bit`` goes to
    ``ROOT/frankfurt/frankfurt_000001_058914_leftImg8bit.png``)."""
    city = frame_name.split("_", 1)[0] or "frames"
    return Path(root) / city / f"{frame_name}.png"
