"""Kafka (``confluent-kafka``): one record a result, keyed by the source id, so that one
source's results stay in order within a partition. The value is the framed wire message
(``wire.framing``). librdkafka keeps its own connection and retries; in live flow its
queue is short and a record it cannot take is the caller's to drop, in lossless flow a
record waits for room and never times out.
"""

from __future__ import annotations

import logging
import uuid

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, Producer, TopicPartition

from segstream.pipeline.brokers import BrokerDown, BrokerUri, framed_record, frames_of_record
from segstream.pipeline.wire.messages import Message

logger = logging.getLogger(__name__)

LIVE_QUEUE = 64  # records librdkafka may hold for a live pipeline before it refuses more
CLOSE_FLUSH_S = 5.0


class Publisher:
    """Produces each result to the topic ``uri.name``."""

    def __init__(self, uri: BrokerUri, lossless: bool = False, maxlen: int = 0) -> None:
        self.uri = uri
        self.lossless = lossless
        self.failed = 0  # records librdkafka gave up on (live flow: after message.timeout.ms)
        self._producer = Producer({
            "bootstrap.servers": f"{uri.host}:{uri.port}",
            "linger.ms": 1,
            "acks": "1",
            "queue.buffering.max.messages": 100_000 if lossless else LIVE_QUEUE,
            "message.timeout.ms": 0 if lossless else 5_000,  # lossless: retry until delivered
            "reconnect.backoff.max.ms": 2_000,
            "logger": logger,
        })

    def encode(self, message: Message) -> bytes:
        return framed_record(message)

    def _delivered(self, error: object, _record: object) -> None:
        if error is not None:
            self.failed += 1

    def send(self, source: str, record: bytes) -> None:
        try:
            self._producer.produce(self.uri.name, record, key=source.encode(), on_delivery=self._delivered)
        except BufferError:
            self._producer.poll(0.05)
            raise BrokerDown(f"{self.uri}: the producer's queue is full (the broker does not take records)") from None
        except KafkaException as exc:
            raise BrokerDown(f"{self.uri}: {exc}") from None
        self._producer.poll(0)

    def close(self) -> None:
        left = self._producer.flush(CLOSE_FLUSH_S)
        if left:
            logger.warning("%s: %d records not delivered at close", self.uri, left)


class Feed:
    """Reads every partition of the topic, without a consumer group (nothing committed):
    from the end (new results), or from the start with ``?from=start``."""

    def __init__(self, uri: BrokerUri, sources: list[str] | None = None) -> None:
        self.uri = uri
        # fetch.wait.max.ms: the broker answers a fetch within 10 ms even with little data
        # (librdkafka's default, 500 ms, would be most of a result's latency here)
        self._consumer = Consumer({"bootstrap.servers": f"{uri.host}:{uri.port}", "group.id": f"segstream-{uuid.uuid4()}",
                                   "enable.auto.commit": False, "fetch.wait.max.ms": 10, "logger": logger})
        self._start = OFFSET_BEGINNING if uri.options.get("from") == "start" else OFFSET_END
        self._assigned = False

    def _assign(self) -> bool:
        try:
            topics = self._consumer.list_topics(self.uri.name, timeout=2.0).topics
        except KafkaException as exc:
            logger.warning("%s: %s; retrying", self.uri, exc)
            return False
        partitions = topics.get(self.uri.name).partitions if self.uri.name in topics else {}
        if not partitions:
            return False
        self._consumer.assign([TopicPartition(self.uri.name, p, self._start) for p in partitions])
        self._assigned = True
        return True

    def receive(self, timeout_ms: int) -> list[bytes] | None:
        if not self._assigned and not self._assign():
            return None
        record = self._consumer.poll(timeout_ms / 1000)
        if record is None or record.error():
            return None
        return frames_of_record(record.value() or b"", record.key() or b"")

    def close(self) -> None:
        self._consumer.close()
