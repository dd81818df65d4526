"""An encoded image's size from its header, before anything is decoded: JPEG's frame
header and PNG's IHDR. Used to pick a reduced JPEG decode (``reduced_decode.py``) and to
refuse, unread, an image larger than a frame may be (a few hundred bytes can claim
30000x30000, which OpenCV would otherwise allocate, 2.7 GB, and decode for seconds).
"""

from __future__ import annotations

import numpy as np

from segstream.pipeline.wire.checks import MAX_FRAME_PIXELS

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Start-of-frame markers: baseline, extended, progressive, lossless and the arithmetic-coded
# ones (not C4: Huffman tables, C8: reserved, CC: arithmetic conditioning).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RSTn carry no length
HEADER_SCAN_BYTES = 1 << 20  # a frame header further in than this (huge EXIF) is not looked for


def jpeg_size(data: bytes | np.ndarray) -> tuple[int, int] | None:
    """(height, width) from a JPEG's frame header, or None for anything that is not a
    well-formed JPEG up to that header (the caller then decodes it whole, as any image)."""
    buf = memoryview(_as_bytes(data))
    end = min(len(buf), HEADER_SCAN_BYTES)
    if end < 4 or buf[0] != 0xFF or buf[1] != 0xD8:
        return None
    pos = 2
    while pos + 4 <= end:
        if buf[pos] != 0xFF:
            return None
        marker = buf[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        length = (buf[pos + 2] << 8) | buf[pos + 3]
        if length < 2:
            return None
        if marker in _SOF:
            if pos + 9 > end or length < 8:
                return None
            height = (buf[pos + 5] << 8) | buf[pos + 6]
            width = (buf[pos + 7] << 8) | buf[pos + 8]
            return (height, width) if height > 0 and width > 0 else None
        if marker in (0xD9, 0xDA):  # end of image, or the scan began before any frame header
            return None
        pos += 2 + length
    return None


def png_size(data: bytes | np.ndarray) -> tuple[int, int] | None:
    """(height, width) from a PNG's IHDR, or None for anything else."""
    head = bytes(memoryview(_as_bytes(data))[:24])
    if len(head) < 24 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return (height, width) if height > 0 and width > 0 else None


def image_size(data: bytes | np.ndarray) -> tuple[int, int] | None:
    """(height, width) of a JPEG or PNG from its header; None for other formats or a
    header that cannot be read."""
    return jpeg_size(data) or png_size(data)


def too_large(size: tuple[int, int] | None) -> str:
    """Why an image of ``size`` cannot be a frame ("" if it can, or the size is unknown)."""
    if size is None or size[0] * size[1] <= MAX_FRAME_PIXELS:
        return ""
    return (f"it is {size[1]}x{size[0]} by its header, {size[0] * size[1] / 1e6:.0f} M pixels; a frame may have "
            f"{MAX_FRAME_PIXELS / 1e6:.0f} M at most (not decoded)")


def _as_bytes(data: bytes | np.ndarray) -> bytes | np.ndarray:
    return np.ascontiguousarray(data, np.uint8).ravel() if isinstance(data, np.ndarray) else data
