"""MQTT (``paho-mqtt``), QoS 1: one message a result, on ``uri.name`` with ``{source}``
expanded to the source id (``segstream/{source}/masks``), the payload the framed wire
message (``wire.framing``). paho reconnects by itself; a result that finds it
disconnected is refused (``BrokerDown``) for the caller to drop (live) or retry
(lossless).
"""

from __future__ import annotations

import logging
import queue
import uuid

import paho.mqtt.client as mqtt

from segstream.pipeline.brokers import BrokerDown, BrokerUri, framed_record, frames_of_record
from segstream.pipeline.wire.messages import Message

logger = logging.getLogger(__name__)

CONNECT_S = 2.0
LOSSLESS_ACK_S = 10.0
MAX_INFLIGHT = 64


def _client(uri: BrokerUri, name: str) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"segstream-{name}-{uuid.uuid4().hex[:8]}")
    client.reconnect_delay_set(min_delay=1, max_delay=2)
    client.max_inflight_messages_set(MAX_INFLIGHT)
    client.connect_async(uri.host, uri.port, keepalive=30)
    client.loop_start()
    return client


class Publisher:
    """Publishes each result to its source's topic."""

    def __init__(self, uri: BrokerUri, lossless: bool = False, maxlen: int = 0) -> None:
        self.uri = uri
        self.lossless = lossless
        self._client = _client(uri, "pub")

    def encode(self, message: Message) -> bytes:
        return framed_record(message)

    def send(self, source: str, record: bytes) -> None:
        if not self._client.is_connected():
            raise BrokerDown(f"{self.uri}: not connected")
        info = self._client.publish(self.uri.name.replace("{source}", source), record, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise BrokerDown(f"{self.uri}: {mqtt.error_string(info.rc)}")
        if self.lossless:  # the broker acknowledged it (PUBACK) before the next goes
            info.wait_for_publish(LOSSLESS_ACK_S)
            if not info.is_published():
                raise BrokerDown(f"{self.uri}: no acknowledgement within {LOSSLESS_ACK_S:.0f} s")

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


class Feed:
    """Subscribes (QoS 1) to the topic, ``{source}`` as the ``+`` wildcard."""

    def __init__(self, uri: BrokerUri, sources: list[str] | None = None) -> None:
        self.uri = uri
        self._messages: queue.Queue[bytes] = queue.Queue(maxsize=1024)
        topics = [uri.name.replace("{source}", s) for s in sources] if sources and "{source}" in uri.name \
            else [uri.name.replace("{source}", "+")]
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"segstream-sub-{uuid.uuid4().hex[:8]}")
        self._client.on_connect = lambda client, *_: [client.subscribe(t, qos=1) for t in topics]
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)
        self._client.connect_async(uri.host, uri.port, keepalive=30)
        self._client.loop_start()

    def _on_message(self, _client: object, _userdata: object, message: mqtt.MQTTMessage) -> None:
        try:
            self._messages.put_nowait(bytes(message.payload))
        except queue.Full:
            logger.warning("%s: the reader fell behind; a message was dropped", self.uri)

    def receive(self, timeout_ms: int) -> list[bytes] | None:
        try:
            payload = self._messages.get(timeout=timeout_ms / 1000)
        except queue.Empty:
            return None
        return frames_of_record(payload)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()
