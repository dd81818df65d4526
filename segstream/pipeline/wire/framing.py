"""One wire message as one binary blob, for carriers of single messages (Kafka, MQTT).

The ZeroMQ socket carries a message as frames ``[topic, header, payload...]``
(``messages.encode``). A broker record holds one blob, so the frames are laid end to end,
each after its length (``docs/wire-format.md``, "Brokers")::

    b"SGS1"                          magic and framing version
    u32 big-endian: N                the number of frames that follow (header + payloads)
    N times: u32 big-endian length, then that many bytes
                                     frame 0 is the header JSON, frames 1.. the payloads

The topic is not repeated: it is the header's ``source`` (and the record's key on Kafka).
``unframe`` checks every length before it slices, so a truncated or forged blob is a
``MessageError``, never a huge allocation.

    >>> blob = frame([b'{"v": 1}', b"\\x00\\x01"])
    >>> unframe(blob)
    [b'{"v": 1}', b'\\x00\\x01']
"""

from __future__ import annotations

import struct
from typing import Sequence

from segstream.errors import MessageError
from segstream.pipeline.wire import checks

MAGIC = b"SGS1"
MAX_FRAMES = 1 + checks.MAX_PARTS
_U32 = struct.Struct(">I")


def frame(frames: Sequence[bytes | memoryview]) -> bytes:
    """Header and payload frames (without the topic) as one blob."""
    if not 1 <= len(frames) <= MAX_FRAMES:
        raise ValueError(f"a message has a header and at most {checks.MAX_PARTS} payloads, found {len(frames)} frames")
    out = [MAGIC, _U32.pack(len(frames))]
    for item in frames:
        view = memoryview(item)
        out += [_U32.pack(view.nbytes), view.cast("B")]
    return b"".join(out)


def unframe(blob: bytes | memoryview) -> list[bytes]:
    """The frames of a blob made by ``frame``.

    Raises:
        MessageError: not such a blob (``bad_framing``): wrong magic, a count or a length
            that does not fit what is there, or bytes left over.
    """
    data = memoryview(blob).cast("B")
    if data.nbytes < 8 or bytes(data[:4]) != MAGIC:
        raise MessageError("bad_framing", f"a broker record starts with {MAGIC!r} and a frame count; found "
                                          f"{bytes(data[:8])!r}")
    (count,) = _U32.unpack_from(data, 4)
    if not 1 <= count <= MAX_FRAMES:
        raise MessageError("bad_framing", f"frame count {count}, expected 1 to {MAX_FRAMES}")
    frames, offset = [], 8
    for k in range(count):
        if offset + 4 > data.nbytes:
            raise MessageError("bad_framing", f"record ends before the length of frame {k} of {count}")
        (length,) = _U32.unpack_from(data, offset)
        offset += 4
        if length > data.nbytes - offset:
            raise MessageError("bad_framing", f"frame {k} claims {length} bytes, {data.nbytes - offset} are left")
        frames.append(bytes(data[offset:offset + length]))
        offset += length
    if offset != data.nbytes:
        raise MessageError("bad_framing", f"{data.nbytes - offset} bytes after the last of {count} frames")
    return frames
