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
from segstream.pipeline.wire import checks

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


def _require(data: dict[str, Any], key: str) -> Any:
    if key not in data:
        raise MessageError("missing_field", f"header has no {key!r}")
    return data[key]


def _part_from_json(raw: Any, k: int) -> Part:
    if not isinstance(raw, dict):
        raise MessageError("bad_part", f"part {k} is {type(raw).__name__}, expected an object")
    name = checks.text(_require(raw, "name"), f"part {k} name", 32)
    dims = checks.shape(_require(raw, "shape"), f"part {name!r}")
    dtype = _require(raw, "dtype")
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise MessageError("bad_part", f"part {name!r} has dtype {dtype!r:.40}; expected one of {sorted(_DTYPES)}")
    encoding = raw.get("encoding", "raw")
    if not isinstance(encoding, str) or encoding not in ENCODINGS:
        raise MessageError("bad_part", f"part {name!r} has encoding {encoding!r:.40}; expected one of {list(ENCODINGS)}")
    ref = raw.get("ref")
    if ref is not None:
        if not isinstance(ref, dict) or set(ref) != {"ring", "slot", "seq"}:
            raise MessageError("bad_ref", f"part {name!r} ref {ref!r:.80} needs exactly ring, slot and seq")
        ref = ShmRef(checks.ring_name(ref["ring"], f"part {name!r}"),
                     checks.integer(ref["slot"], f"part {name!r} ref slot", 0, checks.MAX_SLOTS, "bad_ref"),
                     checks.integer(ref["seq"], f"part {name!r} ref seq", 0, checks.MAX_NS, "bad_ref"))
    inline = raw.get("inline")
    if inline is not None:
        inline = checks.integer(inline, f"part {name!r} inline index", 0, checks.MAX_PARTS, "bad_part")
    return Part(name, dims, dtype, inline, ref, encoding)


def decode(frames: Sequence[Any]) -> Message:
    """Multipart frames to a validated ``Message`` (every field checked: ``checks.py``).

    Raises:
        MessageError: with a short ``reason`` (``too_few_parts``, ``bad_json``,
            ``bad_version``, ``missing_field``, ``bad_field``, ``bad_name``, ``bad_meta``,
            ``bad_part``, ``bad_ref``, ``too_large``, ``topic_mismatch``,
            ``payload_mismatch``), and nothing else.
    """
    if not 2 <= len(frames) <= 2 + checks.MAX_PARTS:
        raise MessageError("too_few_parts" if len(frames) < 2 else "bad_part",
                           f"expected [topic, header, payload...] with at most {checks.MAX_PARTS} payloads, found "
                           f"{len(frames)} part(s)")
    raw_header = bytes(frames[1])
    if len(raw_header) > MAX_HEADER_BYTES:
        raise MessageError("bad_json", f"header is {len(raw_header)} bytes, limit {MAX_HEADER_BYTES}")
    data = checks.parse_json(raw_header, "header")
    if not isinstance(data, dict):
        raise MessageError("bad_json", f"header is a JSON {type(data).__name__}, expected an object")
    version = _require(data, "version")
    if version != WIRE_VERSION or isinstance(version, bool):
        raise MessageError("bad_version", f"wire version {version!r:.20}, this reader understands {WIRE_VERSION}")
    kind_value = _require(data, "kind")
    if not isinstance(kind_value, str) or kind_value not in {k.value for k in Kind}:
        raise MessageError("bad_field", f"unknown kind {kind_value!r:.40}; expected one of {[k.value for k in Kind]}")
    source = checks.safe_name(_require(data, "source"), "source")
    if bytes(frames[0]) != source.encode():
        raise MessageError("topic_mismatch", f"topic {bytes(frames[0])[:80]!r} but header source {source!r}")
    raw_parts = _require(data, "parts")
    if not isinstance(raw_parts, list) or len(raw_parts) > checks.MAX_PARTS:
        raise MessageError("bad_part", f"parts must be a list of at most {checks.MAX_PARTS}, found {raw_parts!r:.60}")
    parts = [_part_from_json(p, k) for k, p in enumerate(raw_parts)]
    if len({p.name for p in parts}) != len(parts):
        raise MessageError("bad_part", f"part names repeat: {[p.name for p in parts]}")
    payload = list(frames[2:])
    for part in parts:
        if part.inline is None:
            continue
        if not part.inline < len(payload):
            raise MessageError("payload_mismatch", f"part {part.name!r} points at payload {part.inline}, "
                                                   f"message has {len(payload)}")
        if part.encoding != "raw":
            continue
        size = memoryview(payload[part.inline]).nbytes
        if size != part.nbytes:
            raise MessageError("payload_mismatch", f"part {part.name!r} {part.shape} {part.dtype} needs "
                                                   f"{part.nbytes} bytes, payload has {size}")
    header = Header(
        kind=Kind(kind_value),
        source=source,
        index=checks.integer(_require(data, "index"), "index", -1),
        name=checks.safe_name(data.get("name", ""), "name", allow_empty=True),
        capture_ns=checks.integer(_require(data, "capture_ns"), "capture_ns"),
        wall_ns=checks.integer(_require(data, "wall_ns"), "wall_ns"),
        parts=parts,
        stamps=[Stamp(*s) for s in checks.stamps(data.get("stamps", []))],
        meta=checks.meta(data.get("meta", {})),
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
