"""A Python client for the masks a pipeline publishes (see docs/wire-format.md).

Example:
    >>> with MaskSubscriber("tcp://127.0.0.1:5560", timeout_s=10) as masks:  # doctest: +SKIP
    ...     for result in masks:
    ...         print(result.source, result.index, result.mask.shape, result.gap)
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import zmq

from segstream.engines.instance_results import Detection
from segstream.errors import MaskCodecError, MessageError
from segstream.log_throttle import LogThrottle
from segstream.pipeline.brokers import Feed, is_broker_uri, open_feed
from segstream.pipeline.wire.keys import CurveClient
from segstream.pipeline.wire.mask_codec import decode_instance_ids, decode_mask
from segstream.pipeline.wire.messages import Kind, Part, decode, inline_array
from segstream.pipeline.wire.transport import Role, make_socket

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaskResult:
    """One published mask.

    Attributes:
        source: source id.
        index: frame index within the source.
        name: frame name (file stem or zero-padded index).
        mask: (H, W) uint8 class indices; None for a model that only classifies.
        classes: class id -> share of the frame's pixels, for the classes present.
        class_names: class id -> the model's name for it (``road``, ``car``...), for the
            classes present (every id in ``mask`` but the ignore label); empty from a
            pipeline older than ``meta.labels``.
        latency_ms: capture (wall clock) to reception here.
        gap: frames of this source not received just before this one (skipped by a
            live pipeline, or lost by a subscriber that fell behind).
        gt: ground truth label map for dataset replays, else None.
        confidence: (H, W) uint8, the winning class's probability x 255, when the
            pipeline publishes it (``--confidence``), else None.
        classification: for models that classify, the top labels with scores, best
            first: ``[{"label": "urban", "id": 1, "score": 0.87}, ...]``; else None.
        instances: for instance models, each detection (``Instance``), best first; else None.
        instance_ids: (H, W) uint16, the id of the instance each pixel belongs to (0: none),
            for instance models; else None.
        header: the whole decoded header, for anything else.
    """

    source: str
    index: int
    name: str
    mask: np.ndarray | None
    classes: dict[int, float]
    latency_ms: float
    gap: int
    gt: np.ndarray | None = None
    confidence: np.ndarray | None = None
    classification: list[dict[str, Any]] | None = None
    instances: list["Instance"] | None = None
    instance_ids: np.ndarray | None = None
    header: dict[str, Any] = field(default_factory=dict, repr=False)
    class_names: dict[int, str] = field(default_factory=dict)

    def named_classes(self) -> dict[str, float]:
        """``classes`` keyed by class name (the id where the model gives none)."""
        return {self.class_names.get(k, str(k)): share for k, share in self.classes.items()}


# One detected instance (``meta.instances``): the same record the pipeline made it from.
Instance = Detection


class MaskSubscriber:
    """Iterates over the masks a pipeline publishes.

    Args:
        endpoint: the pipeline's publish endpoint (``--publish``).
        sources: only these source ids (None: all).
        timeout_s: end the iteration after this long without a message (``timed_out``
            tells); None waits forever.
        until_end: end the iteration once every source in ``sources`` has sent end of
            stream (without ``sources``: every source seen so far; give ``sources`` to
            read a Kafka topic of several partitions, which may hand one source's whole
            stream before another's first result).
        lossless: connect to a pipeline's ``--publish-lossless`` channel (PULL): every mask
            arrives, and a consumer that falls behind slows the pipeline.
        curve: this consumer's keys for a tcp:// endpoint published with
            ``--publish-keys`` (``keys.load_client``).

    ``endpoint`` may also be a broker the pipeline writes to (``--sink``):
    ``redis://HOST:PORT/KEY``, ``kafka://HOST:PORT/TOPIC`` or ``mqtt://HOST:PORT/TOPIC``
    (``?from=start`` reads what the broker still holds, else new results); every record is
    checked like a message from the socket.

    The socket reconnects on its own when the pipeline restarts; a subscriber that joins
    late gets the next mask, not a backlog. Every message that is neither a result handed
    out nor an end of stream is counted in ``skipped`` by reason (``malformed_<reason>``,
    ``bad_mask``, ``not_a_result``, ``other_source``); ``malformed`` is how many of them
    were malformed.
    """

    def __init__(self, endpoint: str, sources: list[str] | None = None, timeout_s: float | None = None,
                 until_end: bool = True, lossless: bool = False, curve: CurveClient | None = None) -> None:
        self.endpoint = endpoint
        self.sources = set(sources) if sources else None
        self.timeout_s = timeout_s
        self.until_end = until_end
        self.timed_out = False
        self.skipped: Counter[str] = Counter()
        self._throttle = LogThrottle()
        self.gaps: dict[str, int] = {}
        self.ended: set[str] = set()
        self._last: dict[str, int] = {}
        self._feed: Feed = open_feed(endpoint, sources) if is_broker_uri(endpoint) else \
            _SocketFeed(endpoint, sources, lossless, curve)

    def timeout_reason(self) -> str:
        """What the subscriber waited for when it timed out, and the likely reason."""
        what = f"sources {sorted(self.sources)}" if self.sources else "any source"
        reason = f"no mask of {what} for {self.timeout_s:g} s on {self.endpoint}"
        if self.sources and self.skipped.get("other_source"):
            return reason + (f": masks of other sources came ({self.skipped['other_source']} left out); a source's "
                             f"id is its file's stem (clip.mp4 -> 'clip'), or the id it was added with")
        if self.sources:
            return reason + ": is a pipeline running with these source ids (a file's stem: clip.mp4 -> 'clip')?"
        return reason + ": is a pipeline publishing there (segstream run ... --publish ENDPOINT)?"

    def __enter__(self) -> "MaskSubscriber":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[MaskResult]:
        last_message = time.monotonic()
        seen: set[str] = set()
        while True:
            if self.until_end and (self.sources <= self.ended if self.sources else seen and seen <= self.ended):
                return
            frames = self._feed.receive(100)
            if frames is None:
                if self.timeout_s is not None and time.monotonic() - last_message > self.timeout_s:
                    self.timed_out = True
                    logger.warning("%s", self.timeout_reason())
                    return
                continue
            last_message = time.monotonic()
            try:
                message = decode(frames)
            except MessageError as exc:
                self._skip(f"malformed_{exc.reason}", f"skipped a malformed message: {exc}")
                continue
            header = message.header
            if self.sources is not None and header.source not in self.sources:
                self._skip("other_source")
                continue
            if header.kind is Kind.EOS:
                self.ended.add(header.source)
                continue
            if header.kind is not Kind.RESULT:
                self._skip("not_a_result", f"skipped a {header.kind.value} message: only results are published")
                continue
            part = header.part("mask")
            classification = header.meta.get("classification")  # checked by decode
            mask = None
            if part is None or part.inline is None:
                if classification is None:  # neither a mask nor labels: not a result
                    self._skip("not_a_result", f"skipped frame {header.index} of {header.source}: no inline mask "
                                               f"and no classification")
                    continue
            else:
                try:
                    mask = decode_mask(message.payload[part.inline], part.encoding, part.shape)
                except MaskCodecError as exc:
                    self._skip("bad_mask", f"skipped frame {header.index} of {header.source}: {exc}")
                    continue
            seen.add(header.source)
            gap = max(header.index - self._last.get(header.source, header.index - 1) - 1, 0)
            self._last[header.source] = header.index
            self.gaps[header.source] = self.gaps.get(header.source, 0) + gap
            instances = header.meta.get("instances")  # checked by decode
            ids = self._instance_ids(message, header)
            gt_part = _raw_part(header.part("gt"), 2)
            confidence_part = _raw_part(header.part("confidence"), 2)
            yield MaskResult(
                source=header.source,
                index=header.index,
                name=header.name,
                mask=mask,
                classes={int(k): float(v) for k, v in header.meta.get("classes", {}).items()},
                class_names={int(k): str(v) for k, v in header.meta.get("labels", {}).items()},
                latency_ms=(time.time_ns() - header.wall_ns) / 1e6,
                gap=gap,
                gt=inline_array(gt_part, message.payload) if gt_part is not None and gt_part.inline is not None
                else None,
                confidence=inline_array(confidence_part, message.payload)
                if confidence_part is not None and confidence_part.inline is not None else None,
                classification=classification,
                instances=None if instances is None else [
                    Instance(i["id"], i["class_id"], i["label"], float(i["score"]), tuple(i["box"]))  # type: ignore[arg-type]
                    for i in instances],
                instance_ids=ids,
                header=header.to_json(),
            )

    def _instance_ids(self, message: Any, header: Any) -> np.ndarray | None:
        """The ``instance_ids`` part, decoded like a mask (uint16), or None."""
        part = header.part("instance_ids")
        if part is None or part.inline is None:
            return None
        try:
            return decode_instance_ids(message.payload[part.inline], part.encoding, part.shape)
        except MaskCodecError as exc:
            self._skip("bad_instance_ids", f"ignored the instance ids of frame {header.index}: {exc}")
            return None

    @property
    def malformed(self) -> int:
        """Messages skipped because they were malformed (any reason but ``other_source``)."""
        return sum(n for reason, n in self.skipped.items() if reason != "other_source")

    def _skip(self, reason: str, detail: str = "") -> None:
        """Count a skipped message; log at most once per reason every few seconds (a flood of bad
        messages cannot flood the log)."""
        self.skipped[reason] += 1
        if detail and self._throttle.allow(reason):
            logger.warning("%s (counted in skipped; logged at most every %.0f s)", detail, self._throttle.every_s)

    def close(self) -> None:
        """Close the socket (or the broker connection)."""
        self._feed.close()


class _SocketFeed:
    """The pipeline's PUB socket (or its lossless PUSH channel) as a feed of messages."""

    def __init__(self, endpoint: str, sources: list[str] | None, lossless: bool, curve: CurveClient | None) -> None:
        self._context = zmq.Context()
        self._socket = make_socket(self._context, Role.RESULTS_PULL if lossless else Role.RESULTS_SUB,
                                   connect=endpoint, client=curve)
        if sources and not lossless:
            self._socket.setsockopt(zmq.UNSUBSCRIBE, b"")
            for source in sources:  # prefix filter in ZeroMQ, exact match in the subscriber
                self._socket.setsockopt(zmq.SUBSCRIBE, source.encode())

    def receive(self, timeout_ms: int) -> list[bytes] | None:
        if not self._socket.poll(timeout_ms):
            return None
        return self._socket.recv_multipart()

    def close(self) -> None:
        self._socket.close(linger=0)
        self._context.term()


def _raw_part(part: Part | None, ndim: int) -> Part | None:
    """``part`` if it is an inline raw array of ``ndim`` dimensions (else left out)."""
    if part is None or part.inline is None or part.encoding != "raw" or len(part.shape) != ndim:
        return None
    return part
