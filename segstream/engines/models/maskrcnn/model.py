"""Mask R-CNN for inference: ResNet-FPN features, RPN proposals, box classification and
regression, and a 28x28 mask per detection.

The module takes a normalised (N, 3, H, W) batch (the pipeline resizes and normalises, as
for every zoo model) and returns, per image, a fixed number of detections padded with
zeros and how many are real:

- ``boxes`` (N, D, 4) float32, (x0, y0, x1, y1) in input pixels;
- ``scores`` (N, D) float32; ``classes`` (N, D) int64 (0 = background: padding);
- ``masks`` (N, D, 28, 28) float32: each detection's mask probability in its box;
- ``count`` (N,) int64.

Its submodules are named as torchvision's (``backbone``, ``rpn.head``, ``roi_heads.*``),
so torchvision's ``maskrcnn_resnet50_fpn`` state dict loads into ``MaskRCNN(MaskRCNNConfig())``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from segstream.engines.models.maskrcnn import ops
from segstream.engines.models.maskrcnn.backbone import BackboneWithFPN
from segstream.engines.models.maskrcnn.heads import (
    FastRCNNPredictor,
    MaskRCNNHeads,
    MaskRCNNPredictor,
    RPNHead,
    TwoMLPHead,
)
from segstream.engines.models.maskrcnn.onnx_ops import batched_nms, roi_align
from segstream.engines.models.maskrcnn.ops import base_anchors, clip_boxes, decode_boxes, grid_anchors, roi_levels


@dataclass(frozen=True)
class MaskRCNNConfig:
    """The architecture and its inference settings (torchvision's defaults).

    Attributes:
        depth: ResNet depth of the backbone, 50 or 18.
        classes: classes including the background (COCO: 91).
        anchor_sizes: one anchor size per FPN level P2-P6.
        aspect_ratios: anchor aspect ratios (h / w) at every level.
        pre_nms: RPN proposals kept per level before NMS.
        post_nms: RPN proposals kept after NMS.
        rpn_nms: the RPN's NMS IoU threshold.
        score_threshold: detections scoring below are dropped.
        nms_threshold: per-class NMS IoU threshold of the detections.
        detections: detections per image at most (the padded size D).
        channels: channels of the feature pyramid, the RPN and the mask head (256 in
            torchvision's models).
        representation: width of the box head's two fully connected layers (1024).
        frozen_norm: frozen batch norm in the backbone (ImageNet- or COCO-initialised, as
            torchvision's); False: trainable batch norm (a backbone trained from scratch).
    """

    depth: int = 50
    classes: int = 91
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    pre_nms: int = 1000
    post_nms: int = 1000
    rpn_nms: float = 0.7
    score_threshold: float = 0.05
    nms_threshold: float = 0.5
    detections: int = 100
    channels: int = 256
    representation: int = 1024
    frozen_norm: bool = True


class RegionProposalNetwork(nn.Module):
    """The RPN: objectness and box deltas per anchor, then the best proposals."""

    def __init__(self, config: MaskRCNNConfig, channels: int) -> None:
        super().__init__()
        self.config = config
        self.head = RPNHead(channels, len(config.aspect_ratios))
        self._base = [base_anchors(size, config.aspect_ratios) for size in config.anchor_sizes]

    def raw(self, features: list[torch.Tensor], image_hw: tuple[int, int]
            ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Per FPN level: the anchors (A, 4), objectness logits (N, A), box deltas (N, A, 4)
        and the level's index (A,), anchors location-major."""
        logits, deltas = self.head(features)
        anchors, objectness, regression, levels = [], [], [], []
        for k, (feature, score, delta) in enumerate(zip(features, logits, deltas)):
            n, a, h, w = score.shape
            stride = (image_hw[0] // h, image_hw[1] // w)
            anchors.append(grid_anchors(self._base[k], (h, w), stride))
            objectness.append(score.permute(0, 2, 3, 1).reshape(n, -1))
            regression.append(delta.reshape(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
            levels.append(torch.full((h * w * a,), k, dtype=torch.int64))
        return anchors, objectness, regression, levels

    def forward(self, features: list[torch.Tensor], image_hw: tuple[int, int]) -> list[torch.Tensor]:
        """Proposals (K, 4) per image of the batch."""
        return self.propose(*self.raw(features, image_hw), image_hw)

    def propose(self, anchors: list[torch.Tensor], objectness: list[torch.Tensor], regression: list[torch.Tensor],
                levels: list[torch.Tensor], image_hw: tuple[int, int]) -> list[torch.Tensor]:
        """The best ``post_nms`` proposals per image: the top ``pre_nms`` of each level,
        decoded, clipped, NMS within each level."""
        proposals = []
        for i in range(objectness[0].shape[0]):
            boxes, scores, groups = [], [], []
            for level, (a, o, r) in enumerate(zip(anchors, objectness, regression)):
                top = o[i].topk(min(self.config.pre_nms, o[i].shape[0])).indices
                boxes.append(decode_boxes(r[i][top], a[top], (1.0, 1.0, 1.0, 1.0))[:, 0])
                scores.append(torch.sigmoid(o[i][top]))
                groups.append(levels[level][top])
            box, score, group = torch.cat(boxes), torch.cat(scores), torch.cat(groups)
            box = clip_boxes(box, *image_hw)
            wide = ((box[:, 2] - box[:, 0]) >= 1e-3) & ((box[:, 3] - box[:, 1]) >= 1e-3)
            box, score, group = box[wide], score[wide], group[wide]
            keep = batched_nms(box, score, group, self.config.rpn_nms)[: self.config.post_nms]
            proposals.append(box[keep])
        return proposals


class RoIHeads(nn.Module):
    """Box classification and regression on the proposals, then a mask per detection."""

    def __init__(self, config: MaskRCNNConfig, channels: int) -> None:
        super().__init__()
        self.config = config
        self.box_head = TwoMLPHead(channels * 7 * 7, config.representation)
        self.box_predictor = FastRCNNPredictor(config.representation, config.classes)
        self.mask_head = MaskRCNNHeads(channels, (channels,) * 4)
        self.mask_predictor = MaskRCNNPredictor(channels, channels, config.classes)

    @staticmethod
    def _pool(features: list[torch.Tensor], image: int, rois: torch.Tensor, size: int,
              image_hw: tuple[int, int]) -> torch.Tensor:
        """Multi-scale RoIAlign over P2-P5: each RoI from the level its size calls for. (An
        export pools every RoI at every level and keeps the right one: no branch on data.)"""
        levels = roi_levels(rois, len(features))
        exporting = torch.onnx.is_in_onnx_export()
        out = features[0].new_zeros((rois.shape[0], features[0].shape[1], size, size))
        for k, feature in enumerate(features):
            scale = 2.0 ** round(math.log2(feature.shape[-1] / image_hw[1]))
            if exporting:
                chosen = (levels == k).to(out.dtype)[:, None, None, None]
                out = out + roi_align(feature[image:image + 1], rois, size, scale) * chosen
                continue
            index = (levels == k).nonzero().flatten()
            if index.numel():
                out[index] = ops.roi_align(feature[image], rois[index], size, scale)  # differentiable
        return out

    def forward(self, features: list[torch.Tensor], proposals: list[torch.Tensor],
                image_hw: tuple[int, int]) -> dict[str, torch.Tensor]:
        config = self.config
        d = config.detections
        levels = features[:4]  # P2-P5 (the pooled P6 serves the RPN only)
        outputs: dict[str, list[torch.Tensor]] = {"boxes": [], "scores": [], "classes": [], "masks": [], "count": []}
        for i, rois in enumerate(proposals):
            logits, deltas = self.box_predictor(self.box_head(self._pool(levels, i, rois, 7, image_hw)))
            boxes = clip_boxes(decode_boxes(deltas, rois, (10.0, 10.0, 5.0, 5.0)), *image_hw)
            scores = F.softmax(logits, -1)
            classes = torch.arange(config.classes).expand_as(scores)
            boxes, scores, classes = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), classes[:, 1:].reshape(-1)
            keep = (scores > config.score_threshold) & ((boxes[:, 2] - boxes[:, 0]) >= 1e-2) & \
                ((boxes[:, 3] - boxes[:, 1]) >= 1e-2)
            boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
            keep = batched_nms(boxes, scores, classes, config.nms_threshold)[:d]
            boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
            # masks for the real detections only (the mask head is the dearest part per RoI)
            mask_logits = self.mask_predictor(self.mask_head(self._pool(levels, i, boxes, 14, image_hw)))
            size = mask_logits.shape[-1]
            chosen = classes[:, None, None, None].expand(-1, 1, size, size)
            masks = torch.sigmoid(mask_logits.gather(1, chosen))[:, 0]
            count = (scores > 0).sum()
            # padded to D detections: zero boxes, scores, classes and masks after the real ones
            boxes = torch.cat([boxes, boxes.new_zeros((d, 4))])[:d]
            scores = torch.cat([scores, scores.new_zeros(d)])[:d]
            classes = torch.cat([classes, classes.new_zeros(d)])[:d]
            masks = torch.cat([masks, masks.new_zeros((d, size, size))])[:d]
            for name, value in (("boxes", boxes), ("scores", scores), ("classes", classes), ("masks", masks),
                                ("count", count)):
                outputs[name].append(value)
        return {name: torch.stack(values) for name, values in outputs.items()}


class MaskRCNN(nn.Module):
    """Mask R-CNN (He et al., 2017) with a ResNet-FPN backbone.

    Args:
        config: architecture and inference settings.
    """

    def __init__(self, config: MaskRCNNConfig = MaskRCNNConfig()) -> None:
        super().__init__()
        self.config = config
        self.backbone = BackboneWithFPN(config.depth, config.channels, config.frozen_norm)
        self.rpn = RegionProposalNetwork(config, config.channels)
        self.roi_heads = RoIHeads(config, config.channels)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        image_hw = (int(images.shape[-2]), int(images.shape[-1]))
        features = self.backbone(images)
        proposals = self.rpn(features, image_hw)
        return self.roi_heads(features, proposals, image_hw)


__all__ = ["MaskRCNN", "MaskRCNNConfig"]
