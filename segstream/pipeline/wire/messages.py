"""Messages between stages and to downstream consumers.

A message is multipart: ``[topic, header, payload...]``.

- ``topic``: the source id (UTF-8), so subscribers can filter by source.
- ``header``: UTF-8 JSON, see ``Header``. Never pickle: anything that crosses a socket is
  JSON or raw array bytes.
- ``payload``: zero or more raw array buffers, one per header part whose ``inline`` field
  gives its position. Parts held in shared memory carry a ``ref`` instead and have no
  payload frame.

``decode`` validates everything and raises ``MessageError`` with the reason; stages count
and log those and carry on.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Sequence

import numpy as np

from segstream.errors import MessageError

logger = logging.getLogger(__name__)

WIRE_VERSION = 1
_DTYPES = {"uint8", "int8", "uint16", "int16", "int32", "int64", "float16", "float32", "float64"}
MAX_HEADER_BYTES = 1 << 20




class MaskEncoding(str, Enum):
    """How a part's bytes are laid out (see ``mask_codec``)."""

    RAW = "raw"
    PNG = "png"
    RLE = "rle"


ENCODINGS = tuple(e.value for e in MaskEncoding)


class Kind(str, Enum):
    """What a message carries."""

    FRAME = "frame"  # a captured frame
    TENSOR = "tensor"  # a preprocessed model input
    RESULT = "result"  # model output: label map (and more)
    EOS = "eos"  # end of stream for one source


@dataclass(frozen=True)
class ShmRef:
    """Where a part lives in shared memory: ring name, slot and sequence number."""

    ring: str
    slot: int
    seq: int


@dataclass(frozen=True)
class Part:
    """One array carried by a message, inline or by reference.

    Attributes:
        name: role of the array (``frame``, ``tensor``, ``labels``, ``mask``).
        shape: array shape.
        dtype: numpy dtype name.
        inline: index of the payload frame holding the bytes (0 = first after header).
        ref: shared-memory reference when the bytes are not on the socket.
        encoding: ``raw`` (the array's bytes), or ``png`` / ``rle`` for masks.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    inline: int | None = None
    ref: ShmRef | None = None
    encoding: str = "raw"

    def __post_init__(self) -> None:
        if (self.inline is None) == (self.ref is None):
            raise MessageError("bad_part", f"part {self.name!r} needs exactly one of inline or ref")
        if self.dtype not in _DTYPES:
            raise MessageError("bad_part", f"part {self.name!r} has dtype {self.dtype!r}; expected one of {sorted(_DTYPES)}")
        if self.encoding not in ENCODINGS:
            raise MessageError("bad_part", f"part {self.name!r} has encoding {self.encoding!r}; expected one of "
                                           f"{list(ENCODINGS)}")
        if any((not isinstance(d, int)) or d < 0 for d in self.shape):
            raise MessageError("bad_part", f"part {self.name!r} has shape {self.shape}; expected non-negative ints")

    @property
    def nbytes(self) -> int:
        """Size of the array in bytes."""
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                               "encoding": self.encoding}
        if self.inline is not None:
            out["inline"] = self.inline
        else:
            assert self.ref is not None
            out["ref"] = {"ring": self.ref.ring, "slot": self.ref.slot, "seq": self.ref.seq}
        return out


@dataclass
class Stamp:
    """When a stage received and sent a message (monotonic ns, same host clock)."""

    stage: str
    in_ns: int
    out_ns: int


@dataclass
class Header:
    """The JSON header of every message.

    Attributes:
        kind: message kind.
        source: source id (also the topic).
        index: frame index within the source, from 0.
        name: frame name (file stem for images, zero-padded index otherwise).
        capture_ns: ``time.monotonic_ns()`` when the frame was captured (host-local).
        wall_ns: ``time.time_ns()`` at capture (for latency across hosts).
        parts: the arrays the message carries.
        stamps: one per stage passed, in order.
        meta: extra fields (fps, class shares, frame counts at end-of-stream...).
        version: wire-format version.
    """

    kind: Kind
    source: str
    index: int = -1
    name: str = ""
    capture_ns: int = 0
    wall_ns: int = 0
    parts: list[Part] = field(default_factory=list)
    stamps: list[Stamp] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    version: int = WIRE_VERSION

    def part(self, name: str) -> Part | None:
        """The part called ``name``, or None."""
        return next((p for p in self.parts if p.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "kind": self.kind.value,
            "source": self.source,
            "index": self.index,
            "name": self.name,
            "capture_ns": self.capture_ns,
            "wall_ns": self.wall_ns,
            "parts": [p.to_json() for p in self.parts],
            "stamps": [[s.stage, s.in_ns, s.out_ns] for s in self.stamps],
            "meta": self.meta,
        }


@dataclass
class Message:
    """A decoded message: header plus the raw payload frames (bytes-like)."""

    header: Header
    payload: list[Any] = field(default_factory=list)


def eos(source: str, **meta: Any) -> Message:
    """An end-of-stream message for ``source``."""
    now = time.monotonic_ns()
    return Message(Header(Kind.EOS, source, capture_ns=now, wall_ns=time.time_ns(), meta=dict(meta)))


def encode(message: Message) -> list[Any]:
    """Message to multipart frames ``[topic, header, payload...]``."""
    header = json.dumps(message.header.to_json(), separators=(",", ":")).encode()
    return [message.header.source.encode(), header, *message.payload]


def _require(data: dict[str, Any], key: str, types: type | tuple[type, ...]) -> Any:
    if key not in data:
        raise MessageError("missing_field", f"header has no {key!r}")
    value = data[key]
    if not isinstance(value, types) or isinstance(value, bool) and types is not bool:
        raise MessageError("bad_field", f"header field {key!r} is {type(value).__name__}, expected {types}")
    return value


def _part_from_json(raw: Any) -> Part:
    if not isinstance(raw, dict):
        raise MessageError("bad_part", f"part is {type(raw).__name__}, expected an object")
    shape = tuple(_require(raw, "shape", list))
    ref = raw.get("ref")
    if ref is not None:
        if not isinstance(ref, dict) or not {"ring", "slot", "seq"} <= set(ref):
            raise MessageError("bad_part", f"part ref {ref!r} needs ring, slot and seq")
        ref = ShmRef(str(ref["ring"]), int(ref["slot"]), int(ref["seq"]))
    inline = raw.get("inline")
    if inline is not None and not isinstance(inline, int):
        raise MessageError("bad_part", f"part inline index is {inline!r}, expected an int")
    return Part(str(_require(raw, "name", str)), shape, str(_require(raw, "dtype", str)), inline, ref,
                str(raw.get("encoding", "raw")))


def decode(frames: Sequence[Any]) -> Message:
    """Multipart frames to a validated ``Message``.

    Raises:
        MessageError: with a short ``reason`` (``too_few_parts``, ``bad_json``,
            ``bad_version``, ``missing_field``, ``bad_field``, ``bad_part``,
            ``topic_mismatch``, ``payload_mismatch``).
    """
    if len(frames) < 2:
        raise MessageError("too_few_parts", f"expected [topic, header, payload...], found {len(frames)} part(s)")
    topic = bytes(frames[0]).decode("utf-8", "replace")
    raw_header = bytes(frames[1])
    if len(raw_header) > MAX_HEADER_BYTES:
        raise MessageError("bad_json", f"header is {len(raw_header)} bytes, limit {MAX_HEADER_BYTES}")
    try:
        data = json.loads(raw_header)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MessageError("bad_json", f"header is not UTF-8 JSON ({exc})") from None
    if not isinstance(data, dict):
        raise MessageError("bad_json", f"header is a JSON {type(data).__name__}, expected an object")
    version = _require(data, "version", int)
    if version != WIRE_VERSION:
        raise MessageError("bad_version", f"wire version {version}, this reader understands {WIRE_VERSION}")
    try:
        kind = Kind(_require(data, "kind", str))
    except ValueError:
        raise MessageError("bad_field", f"unknown kind {data['kind']!r}; expected one of {[k.value for k in Kind]}") from None
    source = _require(data, "source", str)
    if source != topic:
        raise MessageError("topic_mismatch", f"topic {topic!r} but header source {source!r}")
    parts = [_part_from_json(p) for p in _require(data, "parts", list)]
    payload = list(frames[2:])
    for part in parts:
        if part.inline is None or part.encoding != "raw":
            continue
        if not 0 <= part.inline < len(payload):
            raise MessageError("payload_mismatch", f"part {part.name!r} points at payload {part.inline}, "
                                                   f"message has {len(payload)}")
        size = memoryview(payload[part.inline]).nbytes
        if size != part.nbytes:
            raise MessageError("payload_mismatch", f"part {part.name!r} {part.shape} {part.dtype} needs "
                                                   f"{part.nbytes} bytes, payload has {size}")
    stamps_raw = data.get("stamps", [])
    try:
        stamps = [Stamp(str(s[0]), int(s[1]), int(s[2])) for s in stamps_raw]
    except (TypeError, ValueError, IndexError):
        raise MessageError("bad_field", f"stamps must be [stage, in_ns, out_ns] triples, found {stamps_raw!r}") from None
    meta = data.get("meta", {})
    if not isinstance(meta, dict):
        raise MessageError("bad_field", f"meta is {type(meta).__name__}, expected an object")
    header = Header(
        kind=kind,
        source=source,
        index=int(_require(data, "index", int)),
        name=str(data.get("name", "")),
        capture_ns=int(_require(data, "capture_ns", int)),
        wall_ns=int(_require(data, "wall_ns", int)),
        parts=parts,
        stamps=stamps,
        meta=meta,
        version=version,
    )
    return Message(header, payload)


def inline_array(part: Part, payload: Sequence[Any]) -> np.ndarray:
    """View the inline bytes of ``part`` as an array (read-only, no copy)."""
    assert part.inline is not None
    return np.frombuffer(payload[part.inline], dtype=part.dtype).reshape(part.shape)


def derive(message: Message, kind: Kind) -> Message:
    """A new message about the same frame: same source, index, name, timestamps, stamps
    and meta; no parts."""
    h = message.header
    return Message(Header(kind, h.source, h.index, h.name, h.capture_ns, h.wall_ns, [], list(h.stamps), dict(h.meta)))
