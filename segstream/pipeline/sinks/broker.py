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
  for a broker that is down, retried with backoff).
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
        self._queue: deque[tuple[str, Any]] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._send_loop, name=f"sink-{self.scheme}", daemon=True)
        self._thread.start()

    # -- the stage's side ---------------------------------------------------------------

    def write(self, result: SinkResult) -> None:
        if result.public is not None:
            self._put(result.header.source, self.publisher.encode(result.public))

    def end_source(self, final: SinkResult) -> None:
        if final.public is not None:
            self._put(final.header.source, self.publisher.encode(final.public), wait_s=EOS_WAIT_S)

    def _put(self, source: str, record: Any, wait_s: float = 0.0) -> None:
        with self._cond:
            if (self.lossless or wait_s) and len(self._queue) >= QUEUE_DEPTH:
                # backpressure (lossless: as long as it takes), or an end of stream (live: a
                # while): wait for room, in slices that notice a stop
                deadline = time.monotonic() + wait_s
                while len(self._queue) >= QUEUE_DEPTH and not self.context.stopping() and \
                        (self.lossless or time.monotonic() < deadline):
                    self._cond.wait(0.05)
            if len(self._queue) >= QUEUE_DEPTH:
                self.skipped += 1
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
                if self._closing and not self.lossless:
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

    def close(self) -> None:
        deadline = time.monotonic() + CLOSE_DRAIN_S
        with self._cond:
            while self._queue and (self.lossless or time.monotonic() < deadline) and not self.context.stopping():
                self._cond.wait(0.05)
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout=CLOSE_DRAIN_S)
        left = len(self._queue)
        if left:
            self.skipped += left
            logger.warning("%s: %d results not sent at the end", self.uri, left)
        self.publisher.close()

    def figures(self) -> dict[str, Any]:
        figures: dict[str, Any] = {"broker": str(self.uri), "sent": self.sent, "reconnects": self.reconnects,
                                   "skipped": {UNAVAILABLE: self.skipped} if self.skipped else {}}
        failed = getattr(self.publisher, "failed", 0)
        if failed:  # records the client library gave up on after taking them
            figures["skipped"][UNAVAILABLE] = self.skipped + failed
        if self.last_error:
            figures["last_error"] = self.last_error
        return figures


class RedisSink(BrokerSink):
    """``redis://HOST:PORT/KEY``: Redis Streams, ``XADD KEY MAXLEN ~ N`` (``--sink-maxlen``)."""

    scheme = "redis"


class KafkaSink(BrokerSink):
    """``kafka://HOST:PORT/TOPIC``: Kafka, record key = source id."""

    scheme = "kafka"


class MqttSink(BrokerSink):
    """``mqtt://HOST:PORT/TOPIC``: MQTT QoS 1; ``{source}`` in the topic expands."""

    scheme = "mqtt"
