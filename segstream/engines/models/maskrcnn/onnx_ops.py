"""NMS and RoIAlign as functions that run the eager definitions (``ops``) in torch and
export as ONNX's standard ``NonMaxSuppression`` and ``RoiAlign`` (opset 16+,
``output_half_pixel``: torchvision's ``aligned=False``), so an exported Mask R-CNN needs
no custom operator."""

from __future__ import annotations

import torch

from segstream.engines.models.maskrcnn import ops


class NonMaxSuppression(torch.autograd.Function):
    """Indices kept by NMS, best first (``ops.nms``)."""

    @staticmethod
    def forward(ctx, boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:  # noqa: ANN001
        return ops.nms(boxes, scores, threshold)

    @staticmethod
    def symbolic(g, boxes, scores, threshold):  # noqa: ANN001, ANN205 - the exporter's interface
        max_boxes = g.op("Constant", value_t=torch.tensor([1 << 30], dtype=torch.int64))
        iou = g.op("Constant", value_t=torch.tensor([threshold], dtype=torch.float32))
        batch_boxes = g.op("Unsqueeze", boxes, g.op("Constant", value_t=torch.tensor([0], dtype=torch.int64)))
        batch_scores = g.op("Unsqueeze", scores, g.op("Constant", value_t=torch.tensor([0, 1], dtype=torch.int64)))
        selected = g.op("NonMaxSuppression", batch_boxes, batch_scores, max_boxes, iou)
        column = g.op("Constant", value_t=torch.tensor([2], dtype=torch.int64))
        return g.op("Squeeze", g.op("Gather", selected, column, axis_i=1),
                    g.op("Constant", value_t=torch.tensor([1], dtype=torch.int64)))


class RoiAlign(torch.autograd.Function):
    """RoIAlign of one image's (1, C, H, W) features (``ops.roi_align``)."""

    @staticmethod
    def forward(ctx, feature: torch.Tensor, rois: torch.Tensor, size: int, scale: float,  # noqa: ANN001
                sampling: int) -> torch.Tensor:
        return ops.roi_align(feature[0], rois, size, scale, sampling)

    @staticmethod
    def symbolic(g, feature, rois, size, scale, sampling):  # noqa: ANN001, ANN205 - the exporter's interface
        zero = g.op("Constant", value_t=torch.tensor([0], dtype=torch.int64))
        count = g.op("Gather", g.op("Shape", rois), zero, axis_i=0)
        batch_indices = g.op("ConstantOfShape", count, value_t=torch.tensor([0], dtype=torch.int64))
        return g.op("RoiAlign", feature, rois, batch_indices, mode_s="avg", output_height_i=size,
                    output_width_i=size, sampling_ratio_i=sampling, spatial_scale_f=scale,
                    coordinate_transformation_mode_s="output_half_pixel")


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """``ops.nms``, exportable."""
    return NonMaxSuppression.apply(boxes, scores, threshold)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float) -> torch.Tensor:
    """``ops.batched_nms``, exportable."""
    return ops.batched_nms(boxes, scores, groups, threshold, nms)


def roi_align(feature: torch.Tensor, rois: torch.Tensor, size: int, scale: float, sampling: int = 2) -> torch.Tensor:
    """``ops.roi_align`` of a (1, C, H, W) map, exportable."""
    return RoiAlign.apply(feature, rois, size, scale, sampling)
