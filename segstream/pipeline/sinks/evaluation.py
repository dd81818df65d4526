"""``eval:``: each source's masks scored against its frames' ground truth as they are made.

Its figures carry one confusion matrix per source; the supervisor turns them into the
``eval`` section of stats.json, the status line and the metrics. An instance model's
results are scored against the frames' instance ground truth instead (COCO box and mask
AP, per source and over all; recomputed when a source ends and at most every
``AP_EVERY_S`` seconds in between).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from segstream.evaluation.ground_truth import gt_train_ids
from segstream.evaluation.instance_stream import InstanceStreamEval
from segstream.evaluation.metrics import ConfusionAccumulator
from segstream.pipeline.sinks import BaseSink, SinkContext, SinkResult

AP_EVERY_S = 5.0


class Evaluation(BaseSink):
    """Keeps a confusion matrix per source."""

    def __init__(self, _target: str, context: SinkContext) -> None:
        self.classes = len(context.class_names)
        self.scores: dict[str, ConfusionAccumulator] = {}
        self.without_gt = 0
        self.instances: dict[str, InstanceStreamEval] = {}
        self._classes: dict[str, int] = {}  # class name -> category id, shared by the sources
        self._ap: dict[str, Any] = {}
        self._ap_at = 0.0

    def write(self, result: SinkResult) -> None:
        if result.mask is None:
            return
        if result.instance_ids is not None:
            self._write_instances(result)
            return
        if result.gt is None:
            self.without_gt += 1
            return
        target = gt_train_ids(result.gt, result.header.meta.get("gt_kind", ""))
        self.scores.setdefault(result.header.source, ConfusionAccumulator(self.classes)).add(result.mask, target)

    def _write_instances(self, result: SinkResult) -> None:
        if result.gt_instances is None:
            self.without_gt += 1
            return
        header = result.header
        self.instances.setdefault(header.source, InstanceStreamEval(self._classes)).add(
            header.index, result.instance_ids, header.meta.get("instances") or [], result.gt_instances)

    def _instance_ap(self, now: bool = False) -> dict[str, Any]:
        """AP per source, and over all sources (the classes are numbered once for all)."""
        if self.instances and (now or time.monotonic() - self._ap_at >= AP_EVERY_S):
            overall = InstanceStreamEval(self._classes)
            for sid, acc in self.instances.items():
                overall.truth += [dataclasses.replace(i, image=(sid, i.image)) for i in acc.truth]
                overall.found += [dataclasses.replace(i, image=(sid, i.image)) for i in acc.found]
                overall.frames += acc.frames
            self._ap = {"all": overall.summary(), "sources": {sid: acc.summary() for sid, acc in self.instances.items()}}
            self._ap_at = time.monotonic()
        return self._ap

    def end_source(self, final: SinkResult) -> None:
        self._instance_ap(now=True)

    def close(self) -> None:
        self._instance_ap(now=True)

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sources": {sid: acc.to_json() for sid, acc in self.scores.items()},
                               "frames_without_gt": self.without_gt}
        if self.instances:
            out["instances"] = self._instance_ap()
        return out
