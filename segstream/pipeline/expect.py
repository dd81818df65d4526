"""What a stage needs of a message it received: the part, its dtype and its shape. A message
that decodes but does not fit is skipped and counted by reason, never fatal.

    >>> from segstream.pipeline.wire.messages import Header, Kind, Message, Part
    >>> message = Message(Header(Kind.FRAME, "cam", parts=[Part("frame", (4,), "uint8", inline=0)]))
    >>> part_problem(message, "frame", IMAGE)
    "part 'frame' has shape (4,); expected (H, W, 3) uint8"
"""

from __future__ import annotations

from dataclasses import dataclass

from segstream.pipeline.wire.checks import MAX_FRAME_PIXELS
from segstream.pipeline.wire.messages import Message


@dataclass(frozen=True)
class PartShape:
    """What a part must look like.

    Attributes:
        dtypes: the dtypes allowed.
        ndim: the number of dimensions.
        channels: the size of the last dimension, if fixed.
        describe: the expected form, for messages.
    """

    dtypes: tuple[str, ...]
    ndim: int
    channels: int | None
    describe: str


IMAGE = PartShape(("uint8",), 3, 3, "(H, W, 3) uint8")
LABELS = PartShape(("uint8",), 2, None, "(H, W) uint8")
INSTANCE_IDS = PartShape(("uint16",), 2, None, "(H, W) uint16")
TENSOR = PartShape(("float32",), 4, None, "(1, 3, H, W) float32")


def part_problem(message: Message, name: str, expected: PartShape) -> str | None:
    """Why part ``name`` of ``message`` cannot be used as ``expected`` (None if it can)."""
    part = message.header.part(name)
    if part is None:
        return f"message has no part {name!r}; it has {[p.name for p in message.header.parts]}"
    if part.encoding != "raw":
        return f"part {name!r} is {part.encoding}-encoded; stages exchange raw arrays"
    shape = part.shape
    if part.dtype not in expected.dtypes or len(shape) != expected.ndim or 0 in shape \
            or (expected.channels is not None and shape[-1] != expected.channels):
        return f"part {name!r} has shape {shape}{'' if part.dtype in expected.dtypes else ' ' + part.dtype}; " \
               f"expected {expected.describe}"
    return None


FULL_SIZE_KEY = "full_size"  # header meta of a frame decoded reduced: [height, width] in its file
MAX_REDUCTION = 8  # libjpeg's largest: what a full size may be, at most, over the frame's


def full_size_problem(value: object, frame_shape: tuple[int, ...]) -> str | None:
    """Why ``meta.full_size`` cannot be the size of a frame decoded reduced to
    ``frame_shape`` (None if it can): it must be [height, width], integers at least the
    frame's and at most ``MAX_REDUCTION`` times as large, and no more pixels than a frame
    may have (the mask is made at that size)."""
    if not (isinstance(value, list) and len(value) == 2 and all(type(v) is int for v in value)):
        return f"meta {FULL_SIZE_KEY!r} is {value!r:.60}; expected [height, width] as integers"
    if value[0] * value[1] > MAX_FRAME_PIXELS:
        return (f"meta {FULL_SIZE_KEY!r} {value} has {value[0] * value[1]} pixels; a frame may have "
                f"{MAX_FRAME_PIXELS} at most")
    for full, reduced, side in zip(value, frame_shape[:2], ("height", "width")):
        if not reduced <= full <= MAX_REDUCTION * reduced:
            return (f"meta {FULL_SIZE_KEY!r} {side} {full} does not fit a frame reduced to {reduced}; expected "
                    f"{reduced} to {MAX_REDUCTION * reduced}")
    return None
