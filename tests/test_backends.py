"""The backend contract, over every backend this machine can run, on a real Cityscapes frame.

Reference: ONNX Runtime on the CPU. Every other backend must produce the same metadata,
the same outputs (shape and dtype), and the same labels on >= 99.9% of pixels (>= 99% in
fp16). Backends this machine cannot run skip with the reason.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import CITYSCAPES_FRAMES, ROOT

from segstream.engines.backends.base import labels_from_outputs, load_engine
from segstream.engines.backends.choice import ort_provider_missing
from segstream.engines.backends.cuda_probe import probe_cuda
from segstream.engines.metadata import ChannelOrder, ModelMetadata, NormalizeOrder
from segstream.engines.preprocess import Preprocessor

MODEL = "espnet-cityscapes"


def _torch_cuda() -> str | None:
    from segstream.engines.backends.torch_engine import torch_cuda_missing

    return torch_cuda_missing()


def _tensorrt() -> str | None:
    from segstream.engines.backends.tensorrt.versions import tensorrt_missing

    return tensorrt_missing()


# name -> (backend, options, minimum agreement, why it cannot run here or None)
BACKENDS = {
    "onnxruntime-cpu-iobinding": ("onnxruntime", {"io_binding": True}, 0.999, lambda: None),
    "onnxruntime-cuda": ("onnxruntime", {"providers": ("cuda",)}, 0.999, lambda: ort_provider_missing("CUDAExecutionProvider")),
    "onnxruntime-tensorrt": ("onnxruntime", {"providers": ("tensorrt", "cuda")}, 0.999,
                             lambda: ort_provider_missing("TensorrtExecutionProvider")),
    "torch-cpu": ("torch", {"device": "cpu"}, 0.999, lambda: None),
    "torch-cuda-fp32": ("torch", {"device": "cuda"}, 0.999, _torch_cuda),
    "torch-cuda-fp16": ("torch", {"device": "cuda", "precision": "fp16"}, 0.99, _torch_cuda),
    "torch-cuda-graph": ("torch", {"device": "cuda", "cuda_graph": True}, 0.999, _torch_cuda),
    "tensorrt-fp32": ("tensorrt", {"precision": "fp32"}, 0.999, _tensorrt),
    "tensorrt-fp16": ("tensorrt", {"precision": "fp16"}, 0.99, _tensorrt),
}


@pytest.fixture(scope="module")
def reference(espnet_onnx):
    """ONNX Runtime CPU outputs on a real Cityscapes frame."""
    engine = load_engine(espnet_onnx, "onnxruntime")
    frame = cv2.imread(str(CITYSCAPES_FRAMES[0]))
    pre = Preprocessor(engine.metadata)
    outputs = engine.infer(pre(frame))
    engine.close()
    return engine.metadata, frame, outputs


@pytest.mark.parametrize("name", list(BACKENDS))
def test_backend_contract(name, reference, espnet_onnx):
    backend, options, agreement, why_not = BACKENDS[name]
    reason = why_not()
    if reason:
        pytest.skip(f"{name} cannot run here: {reason}")
    meta, frame, expected = reference
    engine = load_engine(MODEL if backend == "torch" else espnet_onnx, backend, **options)
    try:
        assert engine.metadata == meta
        pre = Preprocessor(engine.metadata)
        outputs = engine.infer_image(pre.resize(frame)) if engine.takes_images else engine.infer(pre(frame))
        for out in meta.outputs:
            if out.name in outputs:
                assert outputs[out.name].shape == expected[out.name].shape
                assert outputs[out.name].dtype == expected[out.name].dtype
        labels = labels_from_outputs(outputs, engine.metadata)
        want = labels_from_outputs(expected, meta)
        assert labels.shape == want.shape == (meta.input_height, meta.input_width)
        assert labels.dtype == np.uint8
        assert (labels == want).mean() >= agreement
        # The frame is a real street scene: road, building and car are all there.
        assert {0, 2, 13} <= set(np.unique(labels).tolist())
    finally:
        engine.close()
        engine.close()  # safe twice


def test_device_preprocessing_matches_the_cpu_preprocessor():
    """The GPU path's normalisation (run here on a CPU device) equals the pipeline's own."""
    import torch

    from segstream.engines.backends.device_io import DevicePreprocessor

    image = cv2.resize(cv2.imread(str(CITYSCAPES_FRAMES[0])), (1024, 512))
    torchvision_style = dataclasses.replace(
        ModelMetadata.example(), channel_order=ChannelOrder.RGB, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        scale=1 / 255, normalize_order=NormalizeOrder.SCALE_THEN_STANDARDIZE)
    for meta in (ModelMetadata.example(), torchvision_style):
        device = DevicePreprocessor(meta, torch.device("cpu"))(image).numpy()
        np.testing.assert_allclose(device, Preprocessor(meta)(image), atol=1e-5)
    with pytest.raises(ValueError, match="model's input size"):
        DevicePreprocessor(ModelMetadata.example(), torch.device("cpu"))(image[:100])


def test_device_argmax_maps_the_ignore_channel():
    import torch

    from segstream.engines.backends.device_io import device_labels

    meta = dataclasses.replace(ModelMetadata.example(), ignore_channel=2)  # road, car, then "unlabelled"
    logits = torch.zeros((1, 3, 2, 2))
    logits[0, meta.ignore_channel, 0, 0] = 5.0
    logits[0, 1, 1, 1] = 5.0
    labels = device_labels(logits, meta)
    assert labels.dtype == torch.uint8
    assert labels[0, 0, 0] == meta.ignore_index and labels[0, 1, 1] == 1 and labels[0, 0, 1] == 0


def test_torch_backend_refuses_gpu_options_on_the_cpu():
    from segstream.errors import ModelError

    with pytest.raises(ModelError, match="need the torch backend on CUDA"):
        load_engine(MODEL, "torch", device="cpu", precision="fp16")


def test_auto_picks_onnxruntime_cpu_here_and_says_why():
    from segstream.engines.backends.choice import choose_backend

    if probe_cuda().usable:
        pytest.skip("this machine has a GPU; auto picks a GPU backend")
    choice = choose_backend("auto", MODEL)
    assert (choice.backend, choice.device, choice.providers) == ("onnxruntime", "cpu", ("CPUExecutionProvider",))
    assert "not TensorRT" in choice.reason and "not ONNX Runtime CUDA" in choice.reason
    assert not choice.takes_images


def test_nothing_gpu_related_is_imported_at_start_up():
    """A CPU run's supervisor never imports TensorRT (or torch) to list, resolve or choose."""
    code = ("import sys\n"
            "from segstream.cli import main\n"
            "main(['models'])\n"
            "from segstream.engines.backends.choice import choose_backend\n"
            "choose_backend('auto', 'espnet-cityscapes')\n"
            "from segstream.engines.backends.base import BACKENDS\n"
            "bad = sorted(m for m in ('tensorrt', 'torch', 'segstream.engines.backends.tensorrt.runtime') if m in sys.modules)\n"
            "print('IMPORTED', bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "IMPORTED []" in out.stdout


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None and probe_cuda().usable,
                    reason="TensorRT runs here; the missing-TensorRT messages cannot be shown")
@pytest.mark.parametrize("args", [["build", MODEL, "--fp16"], ["run", "--backend", "tensorrt", "--max-frames", "1"]])
def test_tensorrt_without_tensorrt_or_gpu_is_a_clear_error(args):
    from conftest import run_segstream

    out = run_segstream(*args)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert "segstream: error:" in out.stderr
    missing = "TensorRT is not installed" if importlib.util.find_spec("tensorrt") is None else "usable NVIDIA GPU"
    assert missing in out.stderr


@pytest.mark.slow
def test_pipeline_masks_agree_across_backends(tmp_path):
    """The real pipeline on the dash-cam clip: ``auto`` (ONNX Runtime CPU here) and ``torch``
    publish the same masks, and stats.json says which backend ran and why."""
    import json

    from conftest import CLIP, run_segstream

    masks = {}
    for backend in ("auto", "torch"):
        record = tmp_path / backend
        out = run_segstream("run", "--source", str(CLIP), "--max-frames", "2", "--backend", backend, "--workers", "1",
                            "--record", str(record), "--publish", "")
        assert out.returncode == 0, out.stderr[-3000:]
        stats = json.loads((record / "stats.json").read_text())
        assert stats["frames_published"] == 2
        masks[backend] = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted((record / "masks").rglob("*.png"))]
        assert len(masks[backend]) == 2
        if backend == "auto" and not probe_cuda().usable:
            assert "backend: onnxruntime on cpu\n" in out.stderr  # one short line; why: -v, segstream doctor
            assert "no GPU backend usable" not in out.stderr
            assert stats["backend"]["name"] == "onnxruntime" and "not TensorRT" in stats["backend"]["reason"]
        else:
            assert stats["backend"]["name"] == "torch"
    for a, b in zip(masks["auto"], masks["torch"]):
        assert (a == b).mean() >= 0.999
