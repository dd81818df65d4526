"""Mask R-CNN exported to ONNX finds what PyTorch finds on real frames: the same
detections, boxes within 1 px, scores within 1e-3, each instance's mask (pasted at frame
resolution) with IoU >= 0.99."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
from conftest import CITYSCAPES_FRAMES, CLIP

from segstream.engines.backends.base import load_engine
from segstream.engines.instance_results import detection_instances
from segstream.engines.preprocess import Preprocessor

pytestmark = pytest.mark.integration


def _frames() -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(CLIP))
    frames = []
    for index in range(200):
        ok, frame = capture.read()
        if ok and index in (0, 120, 199):
            frames.append(frame)
    capture.release()
    return [*frames, cv2.imread(str(CITYSCAPES_FRAMES[0]))]


def _full(instance, frame_hw) -> np.ndarray:
    """An instance's mask over the whole frame (it holds it from its ``origin`` on)."""
    full = np.zeros(frame_hw, bool)
    (x, y), (h, w) = instance.origin, instance.mask.shape
    full[y:y + h, x:x + w] = instance.mask
    return full


def assert_same_detections(torch_out: dict, ort_out: dict, metadata, frame_hw) -> int:
    """Matched one to one by box IoU: boxes within 1 px, scores within 1e-3, mask IoU >= 0.99."""
    want = detection_instances(torch_out, metadata, 0, frame_hw)
    got = detection_instances(ort_out, metadata, 0, frame_hw)
    assert len(got) == len(want)
    free = list(range(len(got)))
    for w in want:
        best = min(free, key=lambda k: np.abs(np.subtract(got[k].box, w.box)).max())
        g = got[best]
        free.remove(best)
        assert np.abs(np.subtract(g.box, w.box)).max() <= 1.0 and g.category == w.category
        assert abs(g.score - w.score) <= 1e-3
        gm, wm = _full(g, frame_hw), _full(w, frame_hw)
        union = np.count_nonzero(gm | wm)
        assert union == 0 or np.count_nonzero(gm & wm) / union >= 0.99
    return len(want)


def test_onnxruntime_and_torch_find_the_same_instances_on_real_frames(instance_onnx, tmp_path):
    ort = load_engine(instance_onnx, "onnxruntime")
    weights = instance_onnx.parent / "planted.pt"
    meta = ort.metadata
    torch_engine = load_engine("maskrcnn-r18-fpn", "torch", weights=weights, device="cpu", height=meta.input_height,
                               width=meta.input_width)
    assert dataclasses.replace(torch_engine.metadata, extra={}) == dataclasses.replace(meta, extra={})
    preprocess = Preprocessor(meta)
    found = 0
    for frame in _frames():
        tensor = preprocess(frame)
        found += assert_same_detections(torch_engine.infer(tensor), ort.infer(tensor), meta, frame.shape[:2])
    assert found > 0
    ort.close()
    torch_engine.close()


def test_tensorrt_builds_an_instance_model_for_its_one_image_and_size(instance_onnx):
    """The TensorRT profile of the exported Mask R-CNN (built where TensorRT is: none here)
    is its fixed input: one image at the exported size, whatever --max-batch says."""
    import onnxruntime

    from segstream.engines.backends.tensorrt.builder import resolve_profile
    from segstream.engines.metadata import read_onnx_metadata

    session = onnxruntime.InferenceSession(str(instance_onnx), providers=["CPUExecutionProvider"])
    dims = session.get_inputs()[0].shape
    assert dims == [1, 3, 192, 352]
    profile = resolve_profile(dims, read_onnx_metadata(instance_onnx), None, max_batch=8)
    assert profile.batch == 1 and profile.min == profile.opt == profile.max == (192, 352)
