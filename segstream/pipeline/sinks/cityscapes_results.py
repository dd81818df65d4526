"""``cityscapes-results:DIR``: predictions in the official Cityscapes results format (label
ids at the ground truth's resolution, else the frame's), where the official evaluator finds
them."""

from __future__ import annotations

from typing import Any

import cv2

from segstream.datasets.cityscapes import train_ids_to_label_ids
from segstream.evaluation.results import cityscapes_result_path
from segstream.pipeline.sinks import BaseSink, SinkContext, SinkResult
from segstream.pipeline.sinks.records import write_png


class CityscapesResults(BaseSink):
    """Writes ``DIR/<city>/<frame>.png`` per frame."""

    def __init__(self, folder: str, context: SinkContext) -> None:
        self.folder = folder
        self.written = 0

    def write(self, result: SinkResult) -> None:
        mask = result.mask
        if mask is None:
            return
        gt = result.gt
        if gt is not None and gt.shape != mask.shape:
            mask = cv2.resize(mask, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_NEAREST)
        write_png(cityscapes_result_path(self.folder, result.header.name), train_ids_to_label_ids(mask))
        self.written += 1

    def figures(self) -> dict[str, Any]:
        return {"written": self.written, "folder": self.folder}
