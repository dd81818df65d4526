"""Redis Streams: one stream entry a result, ``XADD KEY MAXLEN ~ N``.

An entry has the field ``header`` (the wire header JSON) and one field per payload part,
named as the part (``mask``, ``confidence``, ``gt``): a reader needs no framing, and a
Redis client in any language reads it (``docs/wire-format.md``, "Brokers").
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis

from segstream.errors import ConfigError
from segstream.pipeline.brokers import BrokerDown, BrokerUri, wire_frames
from segstream.pipeline.wire.messages import Message, encode

logger = logging.getLogger(__name__)

TIMEOUT_S = 2.0


def _client(uri: BrokerUri) -> redis.Redis:
    return redis.Redis(host=uri.host, port=uri.port, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)


class Publisher:
    """``XADD``s each result to the stream ``uri.name``, capped near ``maxlen`` entries."""

    def __init__(self, uri: BrokerUri, lossless: bool = False, maxlen: int = 10_000) -> None:
        self.uri = uri
        self.maxlen = maxlen
        self._redis = _client(uri)

    def encode(self, message: Message) -> dict[str, bytes]:
        frames = encode(message)
        fields = {"header": bytes(frames[1])}
        for part in message.header.parts:
            if part.inline is not None:
                fields[part.name] = bytes(memoryview(frames[2 + part.inline]).cast("B"))
        return fields

    def send(self, source: str, record: dict[str, bytes]) -> None:
        try:
            self._redis.xadd(self.uri.name, record, maxlen=self.maxlen or None, approximate=True)
        except redis.RedisError as exc:
            raise BrokerDown(f"{self.uri}: {exc}") from None

    def close(self) -> None:
        self._redis.close()


class Feed:
    """Reads the stream from its end (new results), or from its start with ``?from=start``."""

    def __init__(self, uri: BrokerUri, sources: list[str] | None = None) -> None:
        self.uri = uri
        self._redis = _client(uri)
        self._last = "0-0" if uri.options.get("from") == "start" else "$"

    def receive(self, timeout_ms: int) -> list[bytes] | None:
        try:
            answer: Any = self._redis.xread({self.uri.name: self._last}, count=1, block=max(timeout_ms, 1))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            logger.warning("%s: %s; retrying", self.uri, exc)
            return None
        except redis.ResponseError as exc:
            if "WRONGTYPE" in str(exc):
                raise ConfigError(f"{self.uri}: key {self.uri.name!r} holds a {self._type()}, not a stream; give "
                                  f"the key a pipeline's redis:// sink writes (--sink redis://HOST:PORT/KEY)") from None
            raise ConfigError(f"{self.uri}: Redis refused the read: {exc}") from None
        if not answer:
            return None
        _stream, entries = answer[0]
        entry_id, fields = entries[0]
        self._last = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        fields = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}
        header = fields.get("header", b"")
        try:
            parts = json.loads(header).get("parts", [])
            order = sorted((p["inline"], p["name"]) for p in parts if isinstance(p, dict) and "inline" in p)
            payloads = [fields[name] for _, name in order]
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
            payloads = []  # decode refuses what does not add up, with the reason
        return wire_frames(header, payloads)

    def _type(self) -> str:
        try:
            kind = self._redis.type(self.uri.name)
        except redis.RedisError:
            return "value of another type"
        return (kind.decode() if isinstance(kind, bytes) else str(kind)) + " value"

    def close(self) -> None:
        self._redis.close()
