"""One contract over every architecture of the zoo.

Each model builds, forwards a small input to its documented output shapes without NaN,
exports to ONNX with dynamic input sizes using only standard operators (explicit resize
modes, no adaptive pooling), and ONNX Runtime agrees with PyTorch on the argmax for
>= 99.9% of pixels (and on the top-1 label for classifiers) at two input sizes.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from segstream.engines.export import export_onnx, inference_module
from segstream.engines.metadata import OutputKind, read_onnx_metadata
from segstream.engines.models.zoo import MODELS

SIZES = ((128, 256), (192, 384))  # (H, W); multiples of every model's size_multiple
STANDARD_DOMAINS = {"", "ai.onnx"}


def _image(h: int, w: int, seed: int) -> torch.Tensor:
    """A smooth random image (normalised), more like a photo than white noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 3, h // 16, w // 16, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("name", list(MODELS))
def test_architecture_contract(name, tmp_path):
    import onnxruntime as ort

    spec = MODELS[name]
    assert all(size % spec.size_multiple == 0 for hw in SIZES for size in hw)
    net = spec.build().eval()
    assert sum(p.numel() for p in net.parameters()) == spec.params  # what segstream models lists
    if spec.task == "instances":
        _instance_contract(name, spec, net, tmp_path)
        return
    h, w = SIZES[0]
    with torch.inference_mode():
        out = net(_image(h, w, 0))
    seg, cls = spec.split_outputs(out)
    meta = spec.metadata
    if seg is not None:
        channels = meta.num_classes + (meta.ignore_channel is not None)
        assert seg.shape == (1, channels, h, w) and torch.isfinite(seg).all()
    if cls is not None:
        assert cls.shape == (1, len(meta.label_names)) and torch.isfinite(cls).all()

    # Untrained models: export and compare the same random weights.
    weights = None
    if spec.weights_asset is None:
        weights = tmp_path / f"{name}.pt"
        torch.save(net.state_dict(), weights)
    path = export_onnx(name, tmp_path / f"{name}.onnx", weights=weights, dynamic=True, height=h, width=w)
    graph = onnx.load(str(path)).graph
    assert {n.domain for n in graph.node} <= STANDARD_DOMAINS
    assert not {n.op_type for n in graph.node} & {"ATen", "AdaptiveAvgPool2d", "PythonOp"}
    for node in graph.node:
        if node.op_type == "Resize":
            assert any(a.name == "mode" for a in node.attribute), "resizes name their mode"
    exported = read_onnx_metadata(path)
    assert exported.outputs == meta.outputs and exported.label_names == meta.label_names

    wrapped, _ = inference_module(name, weights)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for k, (h, w) in enumerate(SIZES):
        image = _image(h, w, k + 1)
        with torch.inference_mode():
            want = wrapped(image)
        want = [t.numpy() for t in (want if isinstance(want, tuple) else (want,))]
        got = session.run(None, {meta.input_name: image.numpy()})
        for spec_out, a, b in zip(meta.outputs, got, want):
            assert a.shape == b.shape and a.dtype == b.dtype, spec_out
            if spec_out.kind is OutputKind.CLASS_IDS:
                assert a.shape == (1, h, w)
                assert (a == b).mean() >= 0.999
            elif spec_out.kind is OutputKind.CLASSIFICATION_SCORES:
                assert np.isfinite(a).all() and abs(float(a.sum()) - 1.0) < 1e-4
                assert a.argmax() == b.argmax()


def _instance_contract(name, spec, net, tmp_path):
    """An instance model returns D padded detections with a count; it exports for one
    input size with standard operators, and ONNX Runtime finds what PyTorch finds."""
    import onnxruntime as ort

    meta = spec.metadata
    d = int(meta.extra["detections"])
    h, w = SIZES[0]
    with torch.inference_mode():
        out = net(_image(h, w, 0))
    assert out["boxes"].shape == (1, d, 4) and out["scores"].shape == (1, d) and out["classes"].shape == (1, d)
    assert out["masks"].shape == (1, d, 28, 28) and out["count"].shape == (1,)
    assert all(torch.isfinite(v.float()).all() for v in out.values())
    weights = tmp_path / f"{name}.pt"
    torch.save(net.state_dict(), weights)
    with pytest.raises(Exception, match="one input size"):
        export_onnx(name, tmp_path / "dynamic.onnx", weights=weights, dynamic=True)
    path = export_onnx(name, tmp_path / f"{name}.onnx", weights=weights, height=h, width=w)
    graph = onnx.load(str(path)).graph
    assert {n.domain for n in graph.node} <= STANDARD_DOMAINS
    assert {"NonMaxSuppression", "RoiAlign"} <= {n.op_type for n in graph.node}
    assert read_onnx_metadata(path).outputs == meta.outputs
    wrapped, _ = inference_module(name, weights, height=h, width=w)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    image = _image(h, w, 1)
    with torch.inference_mode():
        want = [t.numpy() for t in wrapped(image)]
    got = dict(zip([o.name for o in meta.outputs], session.run(None, {meta.input_name: image.numpy()})))
    count = int(want[-1][0])
    assert int(got["count"][0]) == count
    np.testing.assert_allclose(got["boxes"][0, :count], want[0][0, :count], atol=1e-2)
    np.testing.assert_allclose(got["scores"][0, :count], want[1][0, :count], atol=1e-4)
