"""The box operations of Mask R-CNN in plain torch: anchors, box coding, non-maximum
suppression, RoIAlign and the FPN level of each RoI. They follow the definitions of
torchvision's detection code (which segstream cannot import next to the CPU torch), so
torchvision-trained weights give the same detections."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

BOX_CLIP = math.log(1000.0 / 16)  # the largest log-scale a decoded box may take
ROI_CHUNK = 128  # RoIs sampled at once (bounds the memory of the gather)


def base_anchors(size: int, ratios: tuple[float, ...]) -> torch.Tensor:
    """Zero-centred anchors (x0, y0, x1, y1) of one ``size`` for each aspect ratio h/w."""
    r = torch.tensor(ratios, dtype=torch.float32)
    h, w = r.sqrt() * size, size / r.sqrt()
    return (torch.stack([-w, -h, w, h], dim=1) / 2).round()


def grid_anchors(base: torch.Tensor, feature_hw: tuple[int, int], stride_hw: tuple[int, int]) -> torch.Tensor:
    """Anchors at every cell of a feature map, location-major (cell, then anchor)."""
    shift_y = torch.arange(feature_hw[0], dtype=torch.float32) * stride_hw[0]
    shift_x = torch.arange(feature_hw[1], dtype=torch.float32) * stride_hw[1]
    yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
    shifts = torch.stack([xx.reshape(-1), yy.reshape(-1), xx.reshape(-1), yy.reshape(-1)], dim=1)
    return (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)


def decode_boxes(deltas: torch.Tensor, boxes: torch.Tensor, weights: tuple[float, float, float, float]) -> torch.Tensor:
    """Boxes from ``deltas`` (R, 4k) relative to ``boxes`` (R, 4): (R, k, 4)."""
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
    d = deltas.reshape(deltas.shape[0], -1, 4)
    dx, dy = d[..., 0] / weights[0], d[..., 1] / weights[1]
    dw = (d[..., 2] / weights[2]).clamp(max=BOX_CLIP)
    dh = (d[..., 3] / weights[3]).clamp(max=BOX_CLIP)
    px, py = dx * widths[:, None] + cx[:, None], dy * heights[:, None] + cy[:, None]
    pw, ph = torch.exp(dw) * widths[:, None], torch.exp(dh) * heights[:, None]
    return torch.stack([px - 0.5 * pw, py - 0.5 * ph, px + 0.5 * pw, py + 0.5 * ph], dim=-1)


def clip_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``boxes`` clipped to the image."""
    x = boxes[..., 0::2].clamp(0, width)
    y = boxes[..., 1::2].clamp(0, height)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every box of ``a`` with every box of ``b``."""
    top_left = torch.max(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    return inter / (box_area(a)[:, None] + box_area(b)[None, :] - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first.

    Each kept box suppresses the boxes after it that overlap it by more than
    ``threshold``: one IoU row per kept box, never the whole matrix.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    order = scores.detach().argsort(descending=True)
    b = boxes.detach()[order].double().numpy()
    areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    alive = np.ones(len(b), dtype=bool)
    keep = []
    for i in range(len(b)):
        if not alive[i]:
            continue
        keep.append(i)
        rest = b[i + 1:]
        w = np.clip(np.minimum(b[i, 2], rest[:, 2]) - np.maximum(b[i, 0], rest[:, 0]), 0, None)
        h = np.clip(np.minimum(b[i, 3], rest[:, 3]) - np.maximum(b[i, 1], rest[:, 1]), 0, None)
        inter = w * h
        alive[i + 1:] &= inter <= threshold * (areas[i] + areas[i + 1:] - inter)
    return order[torch.tensor(keep, dtype=torch.int64)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float,
                suppress: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor] = nms) -> torch.Tensor:
    """NMS (``suppress``) within each group only: the groups' boxes are moved apart, so
    boxes of different groups never suppress each other."""
    if boxes.numel() == 0 and not torch.onnx.is_in_onnx_export():
        return torch.zeros(0, dtype=torch.int64)
    # the largest coordinate, 0 when there are no boxes (an export may be traced with none)
    largest = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
    offsets = groups.to(boxes.dtype) * (largest + 1)
    return suppress(boxes + offsets[:, None], scores, threshold)


def roi_align(feature: torch.Tensor, rois: torch.Tensor, size: int, scale: float, sampling: int = 2) -> torch.Tensor:
    """RoIAlign (He et al., 2017) of one image's feature map (C, H, W) over ``rois``
    (K, 4) in image pixels: (K, C, size, size). Each output bin averages ``sampling`` x
    ``sampling`` bilinear samples (torchvision's ``roi_align``, ``aligned=False``): a sample
    more than a pixel outside the map is 0, one within a pixel of it takes the border's
    value (``grid_sample`` with border padding, at pixel-exact coordinates)."""
    channels, height, width = feature.shape
    out = feature.new_zeros((rois.shape[0], channels, size, size))
    grid = (torch.arange(size * sampling, dtype=feature.dtype) + 0.5) / sampling  # sample positions, in bins
    for start in range(0, rois.shape[0], ROI_CHUNK):
        r = rois[start:start + ROI_CHUNK] * scale
        k = r.shape[0]
        roi_w = (r[:, 2] - r[:, 0]).clamp(min=1.0)
        roi_h = (r[:, 3] - r[:, 1]).clamp(min=1.0)
        ys = r[:, 1, None] + grid[None, :] * (roi_h / size)[:, None]  # (K, S)
        xs = r[:, 0, None] + grid[None, :] * (roi_w / size)[:, None]
        y = ys[:, :, None].expand(-1, -1, xs.shape[1])
        x = xs[:, None, :].expand(-1, ys.shape[1], -1)
        inside = ((y >= -1.0) & (y <= height) & (x >= -1.0) & (x <= width)).to(feature.dtype)
        normalised = torch.stack([x / max(width - 1, 1) * 2 - 1, y / max(height - 1, 1) * 2 - 1], dim=-1)
        samples = torch.nn.functional.grid_sample(
            feature[None], normalised.reshape(1, -1, normalised.shape[2], 2), mode="bilinear",
            padding_mode="border", align_corners=True)[0]  # (C, K*S, S)
        samples = samples.reshape(channels, k, y.shape[1], y.shape[2]) * inside[None]
        out[start:start + k] = samples.reshape(channels, k, size, sampling, size, sampling).mean(dim=(3, 5)) \
            .permute(1, 0, 2, 3)
    return out


def roi_levels(rois: torch.Tensor, levels: int = 4, canonical: float = 224.0, first: int = 2) -> torch.Tensor:
    """The FPN level (0 for P2 ... ``levels`` - 1) each RoI is pooled from (Lin et al., eq. 1)."""
    level = torch.floor(4 + torch.log2(box_area(rois).clamp(min=1e-12).sqrt() / canonical) + 1e-6)
    return (level.clamp(first, first + levels - 1) - first).long()
