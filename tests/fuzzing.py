"""Structured mutations of wire messages and control messages, for the fuzz tests.

``mutate`` takes a valid multipart message (``[topic, header JSON, payload...]``) and
returns a hostile variant: a header field (at any depth) replaced by a value of the wrong
type, out of range, NaN/Infinity, a huge shape, a traversal name or a bad shared-memory
reference; a field removed or added; payload frames dropped, added, truncated or
replaced by random bytes; the header replaced by random bytes, deep nesting or JSON of
another type. ``mutate_json`` does the same to a control-plane JSON message. Seeded, so a
failure can be replayed.
"""

from __future__ import annotations

import json
import random
from typing import Any, Callable

HOSTILE_VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 2**31, 2**63, -(2**63), 2**64 + 1, 10**400, 0.5, -0.0, 1e308,
    float("nan"), float("inf"), float("-inf"), "", "abc", "\x00", "é" * 3, "a" * 5000,
    "../../../tmp/segstream-fuzz-escape", "/tmp/segstream-fuzz-escape", "..", ".", "a/b", "C:\\x",
    [], [1], [None], [[1, 2]], {}, {"x": "y"}, {"": None},
    [10**6, 10**6, 3], [65536, 65536, 3], [1, 1, 1, 1, 1], [-1, 4, 3], [0, 0, 3], [2**40],
    "segstream-00000000-capture-0-0", "segstream-0a1b2c3d-x-0", "segstream-../../x-0",
]
BAD_REFS: list[Any] = [
    {"ring": "segstream-0a1b2c3d-capture-0-0", "slot": 0, "seq": 1},
    {"ring": "segstream-0a1b2c3d-capture-0-0", "slot": 10**9, "seq": 1},
    {"ring": "segstream-0a1b2c3d-capture-0-0", "slot": "abc", "seq": 1},
    {"ring": "segstream-0a1b2c3d-capture-0-0", "slot": [1], "seq": float("inf")},
    {"ring": "../../dev/shm/x", "slot": 0, "seq": 1},
    {"ring": "/segstream-0a1b2c3d-capture-0-0", "slot": 0, "seq": 1},
    {"ring": "segstream-0a1b2c3d-capture-0-0", "slot": 0},
    {"ring": 7, "slot": 0, "seq": 1, "extra": 1},
]


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a JSON value (dict keys and list indices)."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            out += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for k, child in enumerate(value[:8]):
            out += _paths(child, (*prefix, k))
    return out


def _set(value: Any, path: tuple, new: Any, delete: bool = False) -> None:
    for step in path[:-1]:
        value = value[step]
    if delete:
        del value[path[-1]]
    else:
        value[path[-1]] = new


def _dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), allow_nan=True).encode()


def mutate_json(data: dict[str, Any], rng: random.Random, protect: Callable[[dict[str, Any]], bool]) -> bytes:
    """A hostile variant of the JSON object ``data``, as bytes.

    Args:
        data: a valid message (not changed).
        rng: the random source.
        protect: returns True for a variant the test must not send (one that would
            legitimately end the receiver, such as a valid stop command); another is drawn.
    """
    while True:
        roll = rng.random()
        if roll < 0.06:
            return rng.choice([b"", b"\xff\xfe", b"[" * 100_000, b"{}", b"[]", b"null", b"1e999", b'"x"',
                               bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64))),
                               _dumps(data)[: rng.randint(1, 40)]])
        variant = json.loads(json.dumps(data))
        paths = _paths(variant)
        path = rng.choice(paths)
        if roll < 0.16:
            _set(variant, path, None, delete=True)
        elif roll < 0.22:
            variant[rng.choice(["extra", "version2", "__class__"])] = rng.choice(HOSTILE_VALUES)
        else:
            _set(variant, path, rng.choice(HOSTILE_VALUES))
        if not protect(variant):
            return _dumps(variant)


def mutate(frames: list[bytes], rng: random.Random, protect: Callable[[dict[str, Any]], bool] = lambda h: False
           ) -> list[bytes]:
    """A hostile variant of the wire message ``frames`` (``[topic, header, payload...]``)."""
    topic, header, *payload = frames
    data = json.loads(header)
    roll = rng.random()
    if roll < 0.08:  # payload frames: dropped, added, truncated, random
        payload = list(payload)
        choice = rng.randrange(4)
        if choice == 0 and payload:
            payload.pop(rng.randrange(len(payload)))
        elif choice == 1:
            payload.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64))))
        elif choice == 2 and payload:
            k = rng.randrange(len(payload))
            payload[k] = payload[k][: rng.randint(0, max(len(payload[k]) - 1, 0))]
        elif payload:
            k = rng.randrange(len(payload))
            payload[k] = bytes(rng.getrandbits(8) for _ in range(len(payload[k])))
        return [topic, header, *payload]
    if roll < 0.11:  # too few or too many frames
        return rng.choice([[topic], [b""], [topic, header, *payload, *([b"x"] * 20)]])
    if roll < 0.14:  # a topic that does not match
        return [rng.choice([b"", b"other", b"../x", bytes(range(256))]), header, *payload]
    if roll < 0.24 and data.get("parts"):  # a bad shared-memory reference instead of inline bytes
        variant = json.loads(header)
        part = rng.choice(variant["parts"])
        part.pop("inline", None)
        part["ref"] = rng.choice(BAD_REFS)
        return [topic, _dumps(variant), *payload]
    variant = mutate_json(data, rng, protect)
    try:
        source = json.loads(variant).get("source")
    except (ValueError, AttributeError, RecursionError):
        source = None
    if isinstance(source, str) and rng.random() < 0.5:  # keep topic and source in step now and then
        topic = source.encode("utf-8", "replace")
    return [topic, variant, *payload]
