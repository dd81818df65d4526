"""Metadata-driven preprocessing against plain numpy references."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
from conftest import CITYSCAPES_FRAMES, CLIP

from segstream.engines.metadata import ChannelOrder, NormalizeOrder
from segstream.engines.models.zoo import MODELS
from segstream.engines.preprocess import Preprocessor


def espnet_reference(image_bgr: np.ndarray) -> np.ndarray:
    """ESPNet's own preprocessing, step by step as in its training code (data README)."""
    mean = [72.3923111, 82.90893555, 73.15840149]
    std = [45.3192215, 46.15289307, 44.91483307]
    img = image_bgr.astype(np.float32)
    for c in range(3):
        img[:, :, c] -= mean[c]
    for c in range(3):
        img[:, :, c] /= std[c]
    img = cv2.resize(img, (1024, 512))
    img /= 255
    return img.transpose(2, 0, 1)[None]


def _frames() -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(CLIP))
    ok, video_frame = cap.read()
    cap.release()
    assert ok
    return [cv2.imread(str(CITYSCAPES_FRAMES[0])), video_frame]


@pytest.mark.parametrize("index", [0, 1], ids=["cityscapes-2048x1024", "dashcam-960x540"])
def test_espnet_preprocessing_matches_reference(index):
    frame = _frames()[index]
    ours = Preprocessor(MODELS["espnet-cityscapes"].metadata)(frame)
    ref = espnet_reference(frame)
    assert ours.shape == ref.shape == (1, 3, 512, 1024) and ours.dtype == np.float32
    assert np.abs(ours - ref).max() < 1e-5


def test_rgb_scale_then_standardize_matches_reference():
    frame = _frames()[1]
    meta = dataclasses.replace(MODELS["espnet-cityscapes"].metadata, channel_order=ChannelOrder.RGB,
                               normalize_order=NormalizeOrder.SCALE_THEN_STANDARDIZE,
                               mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), input_width=512,
                               input_height=256)
    ours = Preprocessor(meta)(frame)
    rgb = cv2.resize(frame.astype(np.float32), (512, 256))[:, :, ::-1]
    ref = ((rgb / 255.0 - np.array(meta.mean)) / np.array(meta.std)).astype(np.float32).transpose(2, 0, 1)[None]
    assert np.abs(ours - ref).max() < 1e-5


def test_rejects_a_frame_that_is_not_bgr():
    with pytest.raises(ValueError, match=r"expected a BGR frame of shape \(H, W, 3\)"):
        Preprocessor(MODELS["espnet-cityscapes"].metadata)(np.zeros((4, 4), np.uint8))


def test_an_8bit_resize_where_the_metadata_allows_it_matches_its_reference():
    """``resize_precision: uint8`` resizes the 8-bit frame, then normalises (the zoo's
    ImageNet-normalised models, trained on 8-bit resized images); ESPNet keeps float."""
    frame = _frames()[0]
    meta = MODELS["ddrnet23-slim"].metadata
    assert meta.resize_precision == "uint8"
    assert MODELS["espnet-cityscapes"].metadata.resize_precision == "float"
    ours = Preprocessor(meta)(frame)
    rgb = cv2.resize(frame, (meta.input_width, meta.input_height))[:, :, ::-1].astype(np.float32)
    ref = ((rgb / 255.0 - np.array(meta.mean)) / np.array(meta.std)).astype(np.float32).transpose(2, 0, 1)[None]
    assert np.abs(ours - ref).max() < 1e-5
    float_path = Preprocessor(dataclasses.replace(meta, resize_precision="float"))(frame)
    assert not np.array_equal(ours, float_path)  # the two paths do differ: the choice is the metadata's


def test_nearest_resizing_takes_the_8bit_path_and_gives_the_float_paths_result():
    frame = _frames()[1]
    meta = dataclasses.replace(MODELS["espnet-cityscapes"].metadata, resize_interpolation="nearest",
                               input_width=333, input_height=171)
    ours = Preprocessor(meta)(frame)
    image = cv2.resize(frame.astype(np.float32), (333, 171), interpolation=cv2.INTER_NEAREST)
    gain = meta.scale / np.array(meta.std, np.float64)
    ref = (image * gain.astype(np.float32) - np.array(meta.mean) * gain).astype(np.float32).transpose(2, 0, 1)[None]
    assert np.abs(ours - ref).max() < 1e-5


def test_metadata_refuses_an_unknown_resize_precision():
    from segstream.errors import ModelError

    with pytest.raises(ModelError, match="resize_precision must be one of float, uint8, found 'int4'"):
        dataclasses.replace(MODELS["espnet-cityscapes"].metadata, resize_precision="int4")


def _whole_float_path(meta, frame: np.ndarray) -> np.ndarray:
    """The float path converting every pixel: what the sparse rows must equal bit for bit."""
    pre = Preprocessor(meta)
    pre._sparse_for = lambda frame: None  # the whole conversion, as before sparse rows
    return pre(frame)


@pytest.mark.parametrize("shape,size", [((1080, 1920), (64, 128)), ((1024, 2048), (512, 1024)), ((1081, 1917), (61, 97)),
                                        ((375, 1242), (64, 128)), ((1080, 1920), (256, 512)), ((200, 300), (100, 150)),
                                        ((540, 960), (512, 1024)), ((33, 47), (5, 3))])
def test_sparse_rows_resize_exactly_like_the_whole_float_conversion(shape, size):
    meta = dataclasses.replace(MODELS["espnet-cityscapes"].metadata, input_height=size[0], input_width=size[1])
    assert meta.resize_precision != "uint8"  # ESPNet's float path
    rng = np.random.default_rng(sum(shape))
    pre = Preprocessor(meta)
    for frame in (rng.integers(0, 256, (*shape, 3), np.uint8), rng.integers(0, 256, (*shape, 3), np.uint8),
                  rng.integers(0, 256, (shape[0] + 2, shape[1], 3), np.uint8),  # another size in between
                  rng.integers(0, 256, (*shape, 3), np.uint8)):
        assert np.array_equal(pre(frame), _whole_float_path(meta, frame))
    if shape[0] >= 4 * size[0]:  # far smaller input: only the sampled rows are converted
        assert pre._sparse is not None and pre._sparse.rows.size <= 2 * size[0]
    if shape[0] <= size[0]:
        assert pre._sparse is None


def test_sparse_rows_on_the_real_clip_frame_at_a_small_input():
    cap = cv2.VideoCapture(str(CLIP))
    ok, frame = cap.read()
    cap.release()
    assert ok
    frame = cv2.resize(frame, (1920, 1080))
    meta = dataclasses.replace(MODELS["espnet-cityscapes"].metadata, input_height=64, input_width=128)
    pre = Preprocessor(meta)
    assert np.array_equal(pre(frame), _whole_float_path(meta, frame))
    assert pre._sparse is not None
