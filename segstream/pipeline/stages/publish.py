"""Publish stage: label map -> mask at frame resolution, published to downstream consumers
(ZeroMQ PUB, inline payload), handed to the publish-side sinks (mask files, logs,
evaluation, the lossless channel...) and passed on to render.

Settings: ``spec.PublishSettings``. Every published frame's time breakdown
(``telemetry.timing``) goes into the stage stats and to the sinks.
"""

from __future__ import annotations

import logging
import time

import cv2
import numpy as np

from segstream.pipeline.expect import FULL_SIZE_KEY, IMAGE, INSTANCE_IDS, LABELS, full_size_problem, part_problem
from segstream.pipeline.loop import CARRIED, open_sinks, open_writer, run_middle_stage
from segstream.pipeline.overlay import COUNTS_KEY, class_counts, counts_to_meta, resized_class_counts
from segstream.pipeline.runtime import StageRuntime
from segstream.pipeline.sinks import SinkResult
from segstream.pipeline.spec import MaskResolution, PublishSettings, StageSpec
from segstream.pipeline.telemetry.timing import frame_timing
from segstream.pipeline.wire.mask_codec import encode_instance_ids, encode_mask, instance_ids_encoding
from segstream.pipeline.wire.messages import Kind, Message, Part, Stamp, derive, encode
from segstream.pipeline.wire.payloads import PayloadReader
from segstream.pipeline.wire.transport import Role, make_socket

logger = logging.getLogger(__name__)

SUBSCRIBER_GRACE_S = 0.5


def class_shares(counts: np.ndarray, pixels: int, ignore_index: int) -> dict[str, float]:
    """Share of the frame's pixels per class id present (ignore label left out), from the
    mask's ``class_counts``."""
    return {str(i): round(int(c) / pixels, 5) for i, c in enumerate(counts) if c and i != ignore_index}


def class_labels(shares: dict[str, float], names: tuple[str, ...]) -> dict[str, str]:
    """The name of each class id in ``shares`` that the model names (``meta.labels``)."""
    return {key: names[int(key)] for key in shares if int(key) < len(names)}


class PublishProcessor:
    """Resizes labels to the frame, publishes, drives the sinks and forwards to render."""

    finishes_frames = True  # its frames are done once published

    def __init__(self, spec: StageSpec, runtime: StageRuntime) -> None:
        settings = spec.settings
        assert isinstance(settings, PublishSettings)  # StageSpec checks the kind's settings type
        self.spec = spec
        self.settings = settings
        self.runtime = runtime
        meta = settings.metadata
        self.pub = make_socket(runtime.context, Role.RESULTS_PUB, bind=settings.endpoint, server=settings.publish_keys,
                               guard=runtime.guard) if settings.endpoint else None
        # Subscribers already waiting for the pipeline reconnect every 100 ms; they get
        # time to connect and subscribe before the first mask goes out, so they get it too
        # (PUB drops messages for subscriptions not yet known). The grace runs from the
        # bind, while the rest of the pipeline starts; whatever is left of it passes before
        # this stage reports ready, so that no frame waits for it (and none is superseded
        # behind it in live flow).
        grace_ends = time.monotonic() + SUBSCRIBER_GRACE_S if self.pub is not None else 0.0
        self.sinks = open_sinks(spec, runtime, settings.sinks, meta, settings.per_source_dirs,
                                publish_keys=settings.publish_keys, sink_maxlen=settings.sink_maxlen,
                                sink_budget_mb=settings.sink_budget_mb, sink_wait_s=settings.sink_wait_s)
        self.labels = PayloadReader(spec.reads.get("labels"))  # also reads the inline parts
        self.writer = open_writer(spec) if spec.outputs else None
        time.sleep(max(0.0, grace_ends - time.monotonic()))

    def process(self, message: Message) -> Message | None:
        started_ns = time.monotonic_ns()
        problem = part_problem(message, "labels", LABELS) if message.header.part("labels") else None
        if not problem and message.header.part("frame") is not None:
            problem = part_problem(message, "frame", IMAGE)
            full_size = message.header.meta.get(FULL_SIZE_KEY)
            if not problem and full_size is not None:
                problem = full_size_problem(full_size, message.header.part("frame").shape)
        if not problem and message.header.part("instance_ids") is not None:
            problem = part_problem(message, "instance_ids", INSTANCE_IDS)
            if not problem and message.header.part("labels") is None:
                problem = "part 'instance_ids' comes without the 'labels' (each instance's class) it goes with"
        if problem:
            self.discard(message)
            self.runtime.refuse(message.header.source, "bad_input", problem)
            return None
        labels = mask = None
        if message.header.part("labels") is not None:  # a classifier has no label map
            labels = self.labels.take(message, "labels")
            if labels is None:
                self.runtime.stats.skipped.add("overwritten", message.header.source)
                return None
            frame_part = message.header.part("frame")
            # a frame decoded reduced (--reduced-decode) has its mask at the image's own size
            height, width = labels.shape if frame_part is None else \
                message.header.meta.get(FULL_SIZE_KEY) or frame_part.shape[:2]
            mask = _at_size(labels, height, width)
        ids = None
        if message.header.part("instance_ids") is not None:  # an instance model's: at frame resolution
            ids = self.labels.take(message, "instance_ids")
            if ids is None or mask is None:  # the slot was reused first (live flow)
                self.runtime.stats.skipped.add("overwritten", message.header.source)
                return None
            ids = _at_size(ids, *mask.shape)
        gt = self.labels.get(message, "gt") if message.header.part("gt") else None
        gt_instances = self.labels.get(message, "gt_instances") if message.header.part("gt_instances") else None
        # One histogram per frame, from the small label map: the published shares and
        # render's legend both use it.
        counts = resized_class_counts(labels, mask) if labels is not None and mask is not None else None
        public = self._public_message(message, labels, mask, counts, gt, ids)
        public.header.stamps.append(Stamp(self.spec.name, started_ns, time.monotonic_ns()))
        if self.pub is not None:
            # PUB never blocks: a subscriber that falls behind its HWM loses messages on
            # its side (it sees the gap in frame indices); the pipeline never waits for it.
            self.pub.send_multipart(encode(public), copy=False)
        timing = frame_timing(public.header, time.monotonic_ns())
        self.runtime.stats.record_frame(timing)
        self.sinks.write(SinkResult(message.header, mask, gt, public, timing, instance_ids=ids,
                                    gt_instances=gt_instances))
        # Published from here on (consumers have it, files are written): counted out in the
        # ledger at once, so a death before this frame is recorded never leaves a mask on
        # disk that frames_published does not count.
        self.runtime.stats.leaving()
        # The stage's own time includes its sinks' work (consumers already have the mask).
        done = Stamp(self.spec.name, started_ns, time.monotonic_ns())
        if self.writer is None:
            public.header.stamps[-1] = done
            return public
        out = derive(public, Kind.RESULT)
        out.header.stamps[-1] = done
        if counts is not None:
            out.header.meta[COUNTS_KEY] = counts_to_meta(counts)
        self.labels.forward(message, out, *CARRIED)
        if mask is not None and not self.writer.add(out, "mask", mask, lambda: self.runtime.stopping):
            return None
        if ids is not None and not self.writer.add(out, "instance_ids", ids, lambda: self.runtime.stopping):
            return None
        return out

    def _public_message(self, message: Message, labels: np.ndarray | None, mask: np.ndarray | None,
                        counts: np.ndarray | None, gt: np.ndarray | None, ids: np.ndarray | None = None) -> Message:
        """The result consumers get: the mask (frame or model resolution, encoded), its
        class shares, the confidence and ground truth when there are any, the
        classification (header ``classification``) of models that classify, and the
        instance ids (at the mask's resolution) of instance models (``meta.instances``
        came from inference)."""
        meta = self.settings.metadata
        public = derive(message, Kind.RESULT)
        public.header.meta["model"] = meta.name
        if labels is None or mask is None:
            return public
        published = labels if self.settings.mask_resolution is MaskResolution.MODEL else mask
        if published is not mask or counts is None:
            counts = class_counts(published)
        shares = class_shares(counts, published.size, meta.ignore_index)
        public.header.meta.update({"classes": shares, "labels": class_labels(shares, meta.class_names),
                                   "ignore_index": meta.ignore_index})
        encoding = self.settings.mask_encoding.value
        public.header.parts.append(Part("mask", tuple(published.shape), "uint8", inline=0, encoding=encoding))
        public.payload.append(encode_mask(published, encoding))
        confidence = self.labels.take(message, "confidence") if message.header.part("confidence") else None
        if confidence is not None:  # the winning class's probability x 255, like the mask
            if confidence.shape != published.shape:
                confidence = cv2.resize(confidence, (published.shape[1], published.shape[0]),
                                        interpolation=cv2.INTER_NEAREST)
            public.header.parts.append(Part("confidence", tuple(confidence.shape), "uint8",
                                            inline=len(public.payload)))
            public.payload.append(np.ascontiguousarray(confidence))
        if ids is not None:
            ids = _at_size(ids, *published.shape)
            ids_encoding = instance_ids_encoding(encoding)
            public.header.parts.append(Part("instance_ids", tuple(ids.shape), "uint16", inline=len(public.payload),
                                            encoding=ids_encoding))
            public.payload.append(encode_instance_ids(ids, ids_encoding))
        if gt is not None:  # ground truth of a dataset replay, for downstream evaluation
            public.header.parts.append(Part("gt", tuple(gt.shape), "uint8", inline=len(public.payload)))
            public.payload.append(gt)
        return public

    def blocked_ns(self) -> int:
        return self.writer.blocked_ns if self.writer else 0

    def discard(self, message: Message) -> None:
        for name in ("labels", "confidence", "instance_ids"):
            self.labels.release(message, name)

    def end_of_stream(self, message: Message) -> None:
        final = derive(message, Kind.EOS)
        final.header.meta["published"] = self.runtime.stats.per_source.get(message.header.source, 0)
        if self.pub is not None:
            self.pub.send_multipart(encode(final), copy=False)
        self.sinks.end_source(SinkResult(message.header, public=final))
        self.labels.forget_source(message.header.source)

    def close(self) -> None:
        self.sinks.close()
        if self.pub is not None:
            self.pub.close(linger=0 if self.runtime.stopping else 1000)
        self.labels.close()
        if self.writer is not None:
            self.writer.close(unlink=True)


def _at_size(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """A label or id map at (``height``, ``width``), nearest neighbour (as it is if it fits)."""
    if image.shape == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_NEAREST)


def run(spec: StageSpec, runtime: StageRuntime) -> int:
    """Run the publish stage until end of stream or stop."""
    return run_middle_stage(spec, runtime, PublishProcessor(spec, runtime))
