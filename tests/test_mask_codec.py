"""Mask encodings: round trips and rejection of payloads that do not fit."""

from __future__ import annotations

import numpy as np
import pytest

from segstream.errors import MaskCodecError
from segstream.pipeline.wire.mask_codec import decode_mask, encode_mask


@pytest.mark.parametrize("encoding", ["raw", "png", "rle"])
@pytest.mark.parametrize("kind", ["random", "blocks", "constant", "huge-run"])
def test_round_trip(encoding, kind):
    rng = np.random.default_rng(1)
    if kind == "random":
        mask = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    elif kind == "blocks":
        mask = np.kron(rng.integers(0, 19, (8, 8)), np.ones((16, 32))).astype(np.uint8)
    elif kind == "constant":
        mask = np.full((4, 5), 255, np.uint8)
    else:  # a run longer than the 24-bit run length of rle
        mask = np.zeros((4200, 4200), np.uint8)
    encoded = encode_mask(mask, encoding)
    np.testing.assert_array_equal(decode_mask(encoded.tobytes(), encoding, mask.shape), mask)


def test_rle_is_compact_for_segmentation_masks():
    mask = np.kron(np.arange(4, dtype=np.uint8).reshape(2, 2), np.ones((270, 480), np.uint8))
    assert encode_mask(mask, "rle").nbytes < mask.nbytes / 100


@pytest.mark.parametrize("encoding, payload, message", [
    ("raw", bytes(5), "raw mask has 5 bytes"),
    ("rle", bytes(6), "not a multiple of 4"),
    ("rle", np.array([(3 << 8) | 1], "<u4").tobytes(), "cover 3 pixels"),
    ("png", b"not a png", "does not declare the shape"),
    ("jpeg", b"", "unknown mask encoding"),
])
def test_bad_payloads_are_refused(encoding, payload, message):
    with pytest.raises(MaskCodecError, match=message):
        decode_mask(payload, encoding, (2, 3))


@pytest.mark.parametrize("payload, encoding, shape, message", [
    (np.array([(200000 << 8) | 1] * 2400, "<u4").tobytes(), "rle", (200000, 200000), "refused before decoding"),
    (np.array([(5 << 8) | 1], "<u4").tobytes(), "rle", (5,), r"\(height, width\)"),
    (b"", "raw", (), r"\(height, width\)"),
    (b"", "raw", (0, 4), r"\(height, width\)"),
    (b"\x89PNG\r\n\x1a\n" + bytes(8) + (4000).to_bytes(4, "big") + (4000).to_bytes(4, "big"), "png", (2, 2),
     "does not declare the shape"),
    (b"not a png at all, but long enough", "png", (2, 2), "does not declare the shape"),
])
def test_hostile_masks_are_refused_before_any_allocation(payload, encoding, shape, message):
    """A 9.6 KB rle message that declares 200000x200000 pixels once made consumers allocate
    37 GiB; a PNG is checked against its declared shape before it is decoded."""
    with pytest.raises(MaskCodecError, match=message):
        decode_mask(payload, encoding, shape)


def test_instance_ids_round_trip_and_refusals():
    import numpy as np
    import pytest

    from segstream.errors import MaskCodecError
    from segstream.pipeline.wire.mask_codec import decode_instance_ids, encode_instance_ids, instance_ids_encoding

    ids = np.zeros((40, 60), np.uint16)
    ids[5:20, 5:30] = 1
    ids[10:35, 20:55] = 700  # beyond 8 bits
    for mask_encoding in ("raw", "png", "rle"):
        encoding = instance_ids_encoding(mask_encoding)
        payload = encode_instance_ids(ids, encoding)
        assert np.array_equal(decode_instance_ids(payload.tobytes(), encoding, (40, 60)), ids)
    raw = encode_instance_ids(ids, "raw").tobytes()
    png = encode_instance_ids(ids, "png").tobytes()
    eight_bit = __import__("cv2").imencode(".png", ids.astype(np.uint8))[1].tobytes()
    for payload, encoding, shape in ((raw[:-2], "raw", (40, 60)), (raw, "raw", (60, 40 + 1)), (png, "png", (41, 60)),
                                     (eight_bit, "png", (40, 60)), (png[:30], "png", (40, 60)), (raw, "rle", (40, 60)),
                                     (raw, "raw", (0, 60)), (raw, "raw", (1 << 15, 1 << 15))):
        with pytest.raises(MaskCodecError):
            decode_instance_ids(payload, encoding, shape)
