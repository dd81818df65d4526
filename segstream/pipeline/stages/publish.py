"""Publish stage: label map -> mask at frame resolution, published to downstream
consumers (ZeroMQ PUB, inline payload), recorded as PNG, and passed on to render.

Settings: ``endpoint`` (PUB bind address, or None), ``record`` (folder or None),
``per_source_dirs``, ``ignore_index``, ``model``, ``mask_encoding`` (raw, png, rle),
``mask_resolution`` (frame or model), ``lossless_endpoint`` (PUSH channel, or None),
``eval`` (score masks against the frames' ground truth), ``cityscapes_results`` (folder or
None), ``classes`` (the model's class count).

Every published frame's time breakdown (``pipeline.timing``) goes into the stage stats and,
when recording, into ``frames.jsonl``.
"""

from __future__ import annotations

import logging
import time

import cv2
import numpy as np

from segstream.engines.cityscapes import train_ids_to_label_ids
from segstream.evaluation.ground_truth import gt_train_ids
from segstream.evaluation.metrics import ConfusionAccumulator
from segstream.evaluation.results import cityscapes_result_path
from segstream.pipeline.mask_codec import encode_mask
from segstream.pipeline.messages import Kind, Message, Part, Stamp, derive, encode
from segstream.pipeline.overlay import class_counts
from segstream.pipeline.payloads import PayloadReader
from segstream.pipeline.policies import FlowPolicy, Outbox
from segstream.pipeline.records import CLASSIFICATIONS_NAME, FRAMES_NAME, append_jsonl, source_dir, write_png
from segstream.pipeline.stage import CARRIED, StageRuntime, StageSpec, close_writer, open_writer, run_middle_stage
from segstream.pipeline.timing import frame_timing
from segstream.pipeline.transport import Role, make_socket

logger = logging.getLogger(__name__)

SUBSCRIBER_GRACE_S = 0.5


def class_shares(mask: np.ndarray, ignore_index: int) -> dict[str, float]:
    """Share of the frame's pixels per class id present (ignore label left out)."""
    counts = class_counts(mask)
    total = mask.size
    return {str(i): round(int(c) / total, 5) for i, c in enumerate(counts) if c and i != ignore_index}


class PublishProcessor:
    """Resizes labels to the frame, publishes, records and forwards to render."""

    def __init__(self, spec: StageSpec, runtime: StageRuntime) -> None:
        self.spec = spec
        self.runtime = runtime
        settings = spec.settings
        self.record = settings.get("record")
        self.per_source = bool(settings.get("per_source_dirs", False))
        self.ignore_index = int(settings.get("ignore_index", 255))
        self.model = settings.get("model", "")
        self.encoding = settings.get("mask_encoding", "raw")
        endpoint = settings.get("endpoint")
        self.pub = make_socket(runtime.context, Role.RESULTS_PUB, bind=endpoint) if endpoint else None
        if self.pub is not None:
            # Subscribers already waiting for the pipeline reconnect every 100 ms; give
            # them time to connect and subscribe before this stage reports ready, so they
            # get the first mask too (PUB drops messages for subscriptions not yet known).
            time.sleep(SUBSCRIBER_GRACE_S)
        self.mask_resolution = settings.get("mask_resolution", "frame")
        lossless = settings.get("lossless_endpoint")
        # A consumer that must get every mask: PUSH blocks when it falls behind, and so
        # slows the pipeline (that consumer chose backpressure; PUB subscribers never do).
        self.lossless = Outbox([make_socket(runtime.context, Role.RESULTS_PUSH, bind=lossless)], FlowPolicy.LOSSLESS,
                               runtime.stats.skipped, lambda: runtime.stopping) if lossless else None
        self.eval = bool(settings.get("eval", False))
        self.classes = int(settings.get("classes", 0))
        self.scores: dict[str, ConfusionAccumulator] = {}  # per source
        self.cityscapes_results = settings.get("cityscapes_results")
        self.labels = PayloadReader(spec.reader_ids.get("labels"))  # also reads the inline parts
        self.writer = open_writer(spec) if spec.outputs else None

    def _publish(self, message: Message) -> None:
        if self.pub is not None:
            # PUB never blocks: a subscriber that falls behind its HWM loses messages on
            # its side (it sees the gap in frame indices); the pipeline never waits for it.
            self.pub.send_multipart(encode(message), copy=False)
        if self.lossless is not None:
            self.lossless.send(message)

    def process(self, message: Message) -> Message | None:
        started_ns = time.monotonic_ns()
        labels = mask = None
        if message.header.part("labels") is not None:  # a classifier has no label map
            labels = self.labels.take(message, "labels")
            if labels is None:
                self.runtime.stats.skipped.add("overwritten", message.header.source)
                return None
            frame_part = message.header.part("frame")
            height, width = frame_part.shape[:2] if frame_part else labels.shape
            mask = labels
            if labels.shape != (height, width):
                mask = cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
        header = message.header
        gt = self.labels.get(message, "gt") if header.part("gt") else None
        folder = source_dir(self.record, header.source, self.per_source) if self.record else None
        if folder is not None:
            if mask is not None:
                write_png(folder / "masks" / f"{header.name}.png", mask)
            if "classification" in header.meta:
                append_jsonl(folder / CLASSIFICATIONS_NAME, {"frame": header.name, "index": header.index,
                                                             "classification": header.meta["classification"]})
        if mask is not None:
            self._score(header.source, header.name, mask, gt, header.meta.get("gt_kind", ""))
        public = self._public_message(message, labels, mask, gt)
        public.header.stamps.append(Stamp(self.spec.name, started_ns, time.monotonic_ns()))
        self._publish(public)
        timing = frame_timing(public.header, time.monotonic_ns())
        self.runtime.stats.record_frame(timing)
        if folder is not None:
            append_jsonl(folder / FRAMES_NAME, timing)
        if self.writer is None:
            return public
        out = derive(public, Kind.RESULT)
        self.labels.forward(message, out, *CARRIED)
        if mask is not None and not self.writer.add(out, "mask", mask, lambda: self.runtime.stopping):
            return None
        return out

    def _score(self, source: str, name: str, mask: np.ndarray, gt: np.ndarray | None, gt_kind: str) -> None:
        """``--eval``: add the frame to its source's confusion matrix; ``--cityscapes-results``:
        write its label ids at the ground truth's (else the frame's) resolution."""
        target = gt_train_ids(gt, gt_kind) if gt is not None and (self.eval or self.cityscapes_results) else None
        if self.eval:
            if target is None:
                self.runtime.stats.extra["eval_frames_without_gt"] = \
                    self.runtime.stats.extra.get("eval_frames_without_gt", 0) + 1
            else:
                self.scores.setdefault(source, ConfusionAccumulator(self.classes)).add(mask, target)
                self.runtime.stats.extra["eval"] = {sid: acc.to_json() for sid, acc in self.scores.items()}
        if self.cityscapes_results:
            if target is not None and target.shape != mask.shape:
                mask = cv2.resize(mask, (target.shape[1], target.shape[0]), interpolation=cv2.INTER_NEAREST)
            write_png(cityscapes_result_path(self.cityscapes_results, name), train_ids_to_label_ids(mask))

    def _public_message(self, message: Message, labels: np.ndarray | None, mask: np.ndarray | None,
                        gt: np.ndarray | None) -> Message:
        """The result consumers get: the mask (frame or model resolution, encoded), its
        class shares, the confidence and ground truth when there are any, and the
        classification (header ``classification``) of models that classify."""
        public = derive(message, Kind.RESULT)
        public.header.meta["model"] = self.model
        if labels is None or mask is None:
            return public
        published = labels if self.mask_resolution == "model" else mask
        public.header.meta.update({"classes": class_shares(published, self.ignore_index),
                                   "ignore_index": self.ignore_index})
        public.header.parts.append(Part("mask", tuple(published.shape), "uint8", inline=0, encoding=self.encoding))
        public.payload.append(encode_mask(published, self.encoding))
        confidence = self.labels.take(message, "confidence") if message.header.part("confidence") else None
        if confidence is not None:  # the winning class's probability x 255, like the mask
            if confidence.shape != published.shape:
                confidence = cv2.resize(confidence, (published.shape[1], published.shape[0]),
                                        interpolation=cv2.INTER_NEAREST)
            public.header.parts.append(Part("confidence", tuple(confidence.shape), "uint8",
                                            inline=len(public.payload)))
            public.payload.append(np.ascontiguousarray(confidence))
        if gt is not None:  # ground truth of a dataset replay, for downstream evaluation
            public.header.parts.append(Part("gt", tuple(gt.shape), "uint8", inline=len(public.payload)))
            public.payload.append(gt)
        return public

    def blocked_ns(self) -> int:
        return self.writer.blocked_ns if self.writer else 0

    def discard(self, message: Message) -> None:
        self.labels.release(message, "labels")
        self.labels.release(message, "confidence")

    def end_of_stream(self, message: Message) -> None:
        final = derive(message, Kind.EOS)
        final.header.meta["published"] = self.runtime.stats.per_source.get(message.header.source, 0)
        self._publish(final)

    def close(self) -> None:
        linger = 0 if self.runtime.stopping else 1000
        if self.pub is not None:
            self.pub.close(linger=linger)
        if self.lossless is not None:
            self.lossless.close(linger)
        self.labels.close()
        if self.writer is not None:
            close_writer(self.writer, self.runtime)


def run(spec: StageSpec, runtime: StageRuntime) -> int:
    """Run the publish stage until end of stream or stop."""
    return run_middle_stage(spec, runtime, PublishProcessor(spec, runtime))
