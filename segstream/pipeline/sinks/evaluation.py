"""``eval:``: each source's masks scored against its frames' ground truth as they are made.

Its figures carry one confusion matrix per source; the supervisor turns them into the
``eval`` section of stats.json, the status line and the metrics.
"""

from __future__ import annotations

from typing import Any

from segstream.evaluation.ground_truth import gt_train_ids
from segstream.evaluation.metrics import ConfusionAccumulator
from segstream.pipeline.sinks import BaseSink, SinkContext, SinkResult


class Evaluation(BaseSink):
    """Keeps a confusion matrix per source."""

    def __init__(self, _target: str, context: SinkContext) -> None:
        self.classes = len(context.class_names)
        self.scores: dict[str, ConfusionAccumulator] = {}
        self.without_gt = 0

    def write(self, result: SinkResult) -> None:
        if result.mask is None:
            return
        if result.gt is None:
            self.without_gt += 1
            return
        target = gt_train_ids(result.gt, result.header.meta.get("gt_kind", ""))
        self.scores.setdefault(result.header.source, ConfusionAccumulator(self.classes)).add(result.mask, target)

    def figures(self) -> dict[str, Any]:
        return {"sources": {sid: acc.to_json() for sid, acc in self.scores.items()},
                "frames_without_gt": self.without_gt}
