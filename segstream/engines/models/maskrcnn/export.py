"""Mask R-CNN to ONNX with standard operators only (``NonMaxSuppression``, ``RoiAlign``,
``TopK``, ``NonZero``...), one image per call, a fixed number of detections padded with
zeros: the outputs ``boxes`` (1, D, 4), ``scores`` (1, D), ``classes`` (1, D), ``masks``
(1, D, 28, 28) and ``count`` (1,)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from segstream.engines.models.maskrcnn.model import MaskRCNN

OUTPUTS = ("boxes", "scores", "classes", "masks", "count")
OPSET = 17  # RoiAlign's coordinate_transformation_mode needs 16


class DetectionOutputs(nn.Module):
    """The model's dict of outputs as a tuple, in ``OUTPUTS`` order (what ONNX export takes)."""

    def __init__(self, model: MaskRCNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(image)
        return tuple(out[name] for name in OUTPUTS)


def export_onnx(model: MaskRCNN, path: str | Path, height: int, width: int, input_name: str = "image") -> Path:
    """Write ``model`` (in eval mode) as ONNX for (1, 3, ``height``, ``width``) inputs."""
    model.eval()
    example = torch.zeros(1, 3, height, width)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(DetectionOutputs(model), (example,), str(path), input_names=[input_name], output_names=list(OUTPUTS),
                          opset_version=OPSET, dynamo=False)
    return Path(path)
