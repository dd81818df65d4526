"""Message brokers between the pipeline and its consumers: Redis Streams, Kafka and MQTT.

A URI names the broker, and the stream, topic or key the results go to::

    redis://HOST:PORT/KEY        Redis Streams (XADD with MAXLEN ~ N); one entry a result
    kafka://HOST:PORT/TOPIC      Kafka (record key = source id: a source stays in order)
    mqtt://HOST:PORT/TOPIC       MQTT, QoS 1; ``{source}`` in the topic expands

Each broker module offers a ``Publisher`` (the pipeline's side: ``encode`` a wire message
into the broker's record, ``send`` it, raising ``BrokerDown`` when the broker cannot take
it) and a ``Feed`` (a consumer's side: ``receive`` the next message's frames as ZeroMQ
would carry them, for ``messages.decode``). Records follow the public wire format
(``docs/wire-format.md``, "Brokers"). Client libraries are imported when a broker is used.
"""

from __future__ import annotations

import importlib
import logging
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Protocol

from segstream.errors import ConfigError, MessageError
from segstream.pipeline.wire.messages import Message

logger = logging.getLogger(__name__)

BROKER_MODULES = {
    "redis": "segstream.pipeline.brokers.redis_streams",
    "kafka": "segstream.pipeline.brokers.kafka",
    "mqtt": "segstream.pipeline.brokers.mqtt",
}
DEFAULT_PORTS = {"redis": 6379, "kafka": 9092, "mqtt": 1883}
CLIENT_PACKAGES = {"redis": "redis", "kafka": "confluent-kafka", "mqtt": "paho-mqtt"}


class BrokerDown(Exception):
    """The broker cannot be reached or did not take a record (the caller retries)."""


@dataclass(frozen=True)
class BrokerUri:
    """A parsed broker URI.

    Attributes:
        scheme: ``redis``, ``kafka`` or ``mqtt``.
        host: the broker's host.
        port: its port.
        name: the stream key, topic (MQTT: may hold ``{source}``).
        options: the query string's options (``?from=start``).
    """

    scheme: str
    host: str
    port: int
    name: str
    options: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}/{self.name}"


def is_broker_uri(uri: str) -> bool:
    """True for ``redis://``, ``kafka://`` and ``mqtt://`` URIs."""
    return uri.split("://", 1)[0] in BROKER_MODULES and "://" in uri


def parse_broker_uri(uri: str) -> BrokerUri:
    """``scheme://HOST[:PORT]/NAME[?key=value]`` checked.

    Raises:
        ConfigError: an unknown scheme, no host or no name; says the expected form.
    """
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme
    usage = "redis://HOST:6379/KEY, kafka://HOST:9092/TOPIC or mqtt://HOST:1883/TOPIC"
    if scheme not in BROKER_MODULES:
        raise ConfigError(f"unknown broker {uri!r}; expected {usage}")
    name = urllib.parse.unquote(parts.path.lstrip("/"))
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise ConfigError(f"{uri!r} has a port that is not a number; expected {usage}") from None
    if not parts.hostname or not name or any(c in name for c in "\x00\n\r") or len(name) > 512:
        raise ConfigError(f"{uri!r} needs a host and a {'key' if scheme == 'redis' else 'topic'}; expected {usage}")
    options = dict(urllib.parse.parse_qsl(parts.query))
    return BrokerUri(scheme, parts.hostname, port, name, options)


class Publisher(Protocol):
    """The pipeline's side of a broker."""

    def encode(self, message: Message) -> Any:
        """The broker's record for one wire message (made at once: the message's arrays
        may be reused after this returns)."""
        ...

    def send(self, source: str, record: Any) -> None:
        """Hand one record to the broker; raises ``BrokerDown`` if it cannot take it."""
        ...

    def close(self) -> None:
        """Send what waits (briefly) and disconnect."""
        ...


class Feed(Protocol):
    """A consumer's side of a broker."""

    def receive(self, timeout_ms: int) -> list[bytes] | None:
        """The next message as ``[topic, header, payload...]``, or None after ``timeout_ms``."""
        ...

    def close(self) -> None:
        """Disconnect."""
        ...


def _module(scheme: str) -> Any:
    try:
        return importlib.import_module(BROKER_MODULES[scheme])
    except ImportError as exc:
        raise ConfigError(f"the {scheme} broker needs the package {CLIENT_PACKAGES[scheme]} "
                          f"(pip install {CLIENT_PACKAGES[scheme]}): {exc}") from None


def open_publisher(uri: BrokerUri, lossless: bool, maxlen: int) -> Publisher:
    """A publisher for ``uri`` (connects lazily; ``maxlen``: Redis stream length cap)."""
    return _module(uri.scheme).Publisher(uri, lossless=lossless, maxlen=maxlen)


def open_feed(uri: str, sources: list[str] | None = None) -> Feed:
    """A feed of the results at broker ``uri`` (new ones from now; ``?from=start``: all
    the broker still holds).

    Raises:
        ConfigError: a bad URI or a missing client package.
    """
    parsed = parse_broker_uri(uri)
    return _module(parsed.scheme).Feed(parsed, sources)


def framed_record(message: Message) -> bytes:
    """One wire message as a single framed blob (Kafka and MQTT records, ``wire.framing``)."""
    from segstream.pipeline.wire.framing import frame
    from segstream.pipeline.wire.messages import encode

    return frame(encode(message)[1:])


def frames_of_record(blob: bytes, key: bytes = b"") -> list[bytes]:
    """``[topic, header, payload...]`` of a framed record; a blob that is not one comes
    back as ``[key, blob]``, which ``messages.decode`` refuses with its reason."""
    from segstream.pipeline.wire.framing import unframe

    try:
        frames = unframe(blob)
    except MessageError:
        return [key, blob]
    return wire_frames(frames[0], frames[1:])


def wire_frames(header: bytes, payloads: list[bytes]) -> list[bytes]:
    """``[topic, header, payload...]`` for ``messages.decode`` from a record's header and
    payloads (the topic is the header's source; ``decode`` checks they agree)."""
    import json

    try:
        source = json.loads(header).get("source", "")
    except (ValueError, AttributeError, UnicodeDecodeError, TypeError, RecursionError):
        source = ""  # decode refuses the header, with the reason
    return [str(source).encode(), header, *payloads]
