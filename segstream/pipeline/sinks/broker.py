"""Broker sinks: ``redis://HOST:PORT/KEY``, ``kafka://HOST:PORT/TOPIC``,
``mqtt://HOST:PORT/TOPIC`` (publish-side; registered through the ``segstream.sinks``
entry points, like any sink another package adds).

Every result consumers get on the PUB socket, and each end of stream, goes to the broker
as a record of the public wire format (``brokers``). A thread of the sink's own sends
them, so the publish stage never waits on the network:

- live flow: at most ``QUEUE_DEPTH`` records wait; while the broker is down or slow, a
  result that finds the queue full is dropped and counted (``skipped.sink-unavailable``
  in the sink's figures), and the thread reconnects with backoff. A broker that is down
  never slows the pipeline.
- lossless flow: the same bounded queue applies backpressure: ``write`` waits for room,
  so the pipeline slows to what the broker takes, and nothing is dropped (records wait
  for a broker that is down, retried with backoff) -- for at most ``--sink-wait-s``: a
  broker that takes nothing for that long (down, or full: Redis at ``maxmemory`` with
  ``noeviction``) stops the sink with an error naming it, and the run goes on.

A Redis stream keeps ``--sink-maxlen`` entries; the sink measures its first entries and
says what the stream will take at that length (log, and ``expected_mb`` in its figures),
warning when that is over ``--sink-budget-mb`` with the settings that fit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from segstream.errors import ConfigError, OutputError
from segstream.pipeline.brokers import BrokerDown, open_publisher, parse_broker_uri
from segstream.pipeline.sinks import BaseSink, SinkContext, SinkResult
from segstream.pipeline.sources.streams import Backoff

logger = logging.getLogger(__name__)

QUEUE_DEPTH = 64
UNAVAILABLE = "sink-unavailable"
MEASURED_ENTRIES = 10  # the entries whose mean size estimates a stream's memory
CLOSE_DRAIN_S = 5.0  # live flow: how long close waits for the queue to empty
EOS_WAIT_S = 2.0  # live flow: how long an end of stream waits for room in a full queue


class BrokerSink(BaseSink):
    """The sink of one broker URI (``scheme`` set by the subclass)."""

    scheme = ""
    stage = "publish"

    def __init__(self, target: str, context: SinkContext) -> None:
        try:
            self.uri = parse_broker_uri(f"{self.scheme}:{target}")
        except ConfigError as exc:
            raise OutputError(str(exc)) from None
        self.context = context
        self.lossless = context.lossless
        self.publisher = open_publisher(self.uri, self.lossless, context.sink_maxlen)
        self.sent = 0
        self.reconnects = 0
        self.skipped = 0
        self.last_error = ""
        self.entry_bytes = 0.0  # mean size of an entry, once measured
        self._measured: list[int] = []
        self._queue: deque[tuple[str, Any]] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._abandoned = False  # the wait ran out: the sender gives up what is left
        self._thread = threading.Thread(target=self._send_loop, name=f"sink-{self.scheme}", daemon=True)
        self._thread.start()

    # -- the stage's side ---------------------------------------------------------------

    def write(self, result: SinkResult) -> None:
        if result.public is not None:
            record = self.publisher.encode(result.public)
            if not self.entry_bytes:
                self._measure(record, any(part.name == "mask" and part.encoding == "raw"
                                          for part in result.public.header.parts))
            self._put(result.header.source, record)

    def _measure(self, record: Any, raw_mask: bool) -> None:
        """Sizes the first entries; then says what a capped stream of them takes."""
        self._measured.append(_record_bytes(record))
        if len(self._measured) < MEASURED_ENTRIES:
            return
        self.entry_bytes = sum(self._measured) / len(self._measured)
        maxlen, budget = self.context.sink_maxlen, self.context.sink_budget_mb
        if self.scheme != "redis":
            logger.info("%s: entries of ~%.0f KB", self.uri, self.entry_bytes / 1e3)
            return
        if not maxlen:
            logger.warning("%s: entries of ~%.0f KB and no cap (--sink-maxlen 0): the stream grows by ~%.0f MB "
                           "every 1000 results until Redis runs out of memory", self.uri, self.entry_bytes / 1e3,
                           self.entry_bytes / 1e3)
            return
        expected_mb = maxlen * self.entry_bytes / 1e6
        if expected_mb <= budget:
            logger.info("%s: entries of ~%.0f KB; at --sink-maxlen %d the stream takes ~%.0f MB of Redis memory "
                        "(budget %d MB)", self.uri, self.entry_bytes / 1e3, maxlen, expected_mb, budget)
            return
        logger.warning("%s: entries of ~%.0f KB; at --sink-maxlen %d the stream would take ~%.0f MB of Redis "
                       "memory, over the budget of %d MB (--sink-budget-mb): lower --sink-maxlen to %d%s",
                       self.uri, self.entry_bytes / 1e3, maxlen, expected_mb, budget,
                       int(budget * 1e6 // self.entry_bytes),
                       " or publish --mask-encoding png (~30x smaller)" if raw_mask else "")

    def end_source(self, final: SinkResult) -> None:
        if final.public is not None:
            self._put(final.header.source, self.publisher.encode(final.public), wait_s=EOS_WAIT_S)

    def _put(self, source: str, record: Any, wait_s: float = 0.0) -> None:
        with self._cond:
            if (self.lossless or wait_s) and len(self._queue) >= QUEUE_DEPTH:
                # backpressure (lossless: up to --sink-wait-s), or an end of stream (live: a
                # while): wait for room, in slices that notice a stop
                deadline = time.monotonic() + (self.context.wait_s if self.lossless else wait_s)
                while len(self._queue) >= QUEUE_DEPTH and not self.context.stopping() and \
                        time.monotonic() < deadline:
                    self._cond.wait(0.05)
            if len(self._queue) >= QUEUE_DEPTH:
                self.skipped += 1
                if self.lossless and not self.context.stopping():
                    self._abandon()
                    raise OutputError(f"{self.uri} took no record for {self.context.wait_s:g} s (--sink-wait-s): "
                                      f"{self.last_error or 'the broker is too slow'}; its {len(self._queue)} "
                                      f"waiting results are dropped")
                return
            self._queue.append((source, record))
            self._cond.notify_all()

    # -- the sender thread --------------------------------------------------------------

    def _send_loop(self) -> None:
        backoff = Backoff(0.1, 2.0)
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait(0.5)
                if not self._queue:
                    return
                source, record = self._queue[0]
            try:
                self.publisher.send(source, record)
            except BrokerDown as exc:
                if not self.last_error:
                    logger.warning("%s: %s; retrying with backoff (%s)", self.uri, exc,
                                   "results wait: lossless flow" if self.lossless else
                                   "results that find the queue full are skipped: live flow")
                self.last_error = str(exc)
                self.reconnects += 1
                if self._abandoned or (self._closing and not self.lossless):
                    with self._cond:  # a live run that ends does not wait for a broker that is down
                        self.skipped += len(self._queue)
                        self._queue.clear()
                    return
                time.sleep(backoff.next())
                continue
            except Exception as exc:  # noqa: BLE001 - a client bug must not kill the thread silently
                logger.exception("%s: sending failed", self.uri)
                self.last_error = f"{type(exc).__name__}: {exc}"
                with self._cond:
                    self._queue.popleft()
                    self.skipped += 1
                continue
            if self.last_error:
                logger.info("%s: the broker takes results again", self.uri)
                self.last_error = ""
            backoff.reset()
            with self._cond:
                self._queue.popleft()
                self.sent += 1
                self._cond.notify_all()

    def _abandon(self) -> None:
        """Stop waiting for the broker: the sender drops what is left (counted)."""
        self._abandoned = True
        self._cond.notify_all()

    def close(self) -> None:
        deadline = time.monotonic() + (self.context.wait_s if self.lossless else CLOSE_DRAIN_S)
        with self._cond:
            while self._queue and not self._abandoned and time.monotonic() < deadline and \
                    not self.context.stopping():
                self._cond.wait(0.05)
            if self._queue and self.lossless and not self._abandoned:
                self.last_error = self.last_error or "the broker did not take the last results"
                self._abandoned = True  # waited --sink-wait-s: the sender gives up the rest
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout=CLOSE_DRAIN_S)
        left = len(self._queue)
        if left:
            self.skipped += left
            logger.warning("%s: %d results not sent at the end", self.uri, left)
        self.publisher.close()
        if self.lossless and self._abandoned and not self.context.stopping():
            raise OutputError(f"{self.uri} took no record for {self.context.wait_s:g} s (--sink-wait-s), "
                              f"{self.skipped} results not sent: {self.last_error}")

    def figures(self) -> dict[str, Any]:
        figures: dict[str, Any] = {"broker": str(self.uri), "sent": self.sent, "reconnects": self.reconnects,
                                   "skipped": {UNAVAILABLE: self.skipped} if self.skipped else {}}
        failed = getattr(self.publisher, "failed", 0)
        if failed:  # records the client library gave up on after taking them
            figures["skipped"][UNAVAILABLE] = self.skipped + failed
        if self.last_error:
            figures["last_error"] = self.last_error
        if self.entry_bytes:
            figures["entry_bytes"] = round(self.entry_bytes)
            if self.scheme == "redis" and self.context.sink_maxlen:
                figures["expected_mb"] = round(self.context.sink_maxlen * self.entry_bytes / 1e6, 1)
        return figures


def _record_bytes(record: Any) -> int:
    """The bytes a broker record holds (a blob, or Redis fields with their names)."""
    if isinstance(record, dict):
        return sum(len(k) + _record_bytes(v) for k, v in record.items())
    return memoryview(record).nbytes


class RedisSink(BrokerSink):
    """``redis://HOST:PORT/KEY``: Redis Streams, ``XADD KEY MAXLEN ~ N`` (``--sink-maxlen``)."""

    scheme = "redis"


class KafkaSink(BrokerSink):
    """``kafka://HOST:PORT/TOPIC``: Kafka, record key = source id."""

    scheme = "kafka"


class MqttSink(BrokerSink):
    """``mqtt://HOST:PORT/TOPIC``: MQTT QoS 1; ``{source}`` in the topic expands."""

    scheme = "mqtt"
