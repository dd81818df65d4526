"""Mask R-CNN's training losses (He et al., 2017; torchvision's definitions):

- RPN: anchors matched to ground truth (IoU >= 0.7 foreground, < 0.3 background, and each
  box's best anchors foreground), 256 sampled per image, half foreground at most; binary
  cross-entropy on objectness, smooth L1 on the foreground's box deltas.
- Box head: proposals (and the ground-truth boxes) matched at IoU 0.5, ``rois`` sampled per
  image, a quarter foreground at most; cross-entropy on the class, smooth L1 on the
  matched class's deltas.
- Mask head: on the foreground RoIs, binary cross-entropy of the matched class's 28x28
  logits against the ground-truth mask RoI-aligned into the RoI.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from segstream.engines.models.maskrcnn.model import MaskRCNN
from segstream.engines.models.maskrcnn.ops import box_iou, roi_align

BACKGROUND, IGNORED = -1, -2
SMOOTH_L1_BETA = 1.0 / 9
RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
ROI_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
MASK_SIZE = 28


@dataclass(frozen=True)
class Targets:
    """One image's ground truth, in model input pixels.

    Attributes:
        boxes: (G, 4) float32 (x0, y0, x1, y1).
        classes: (G,) int64, 1-based.
        masks: (G, H, W) float32 in {0, 1} at the input size.
    """

    boxes: torch.Tensor
    classes: torch.Tensor
    masks: torch.Tensor


@dataclass(frozen=True)
class SamplingConfig:
    """How many anchors and RoIs each image's losses see."""

    rpn_high: float = 0.7
    rpn_low: float = 0.3
    rpn_batch: int = 256
    rpn_positive: float = 0.5
    roi_iou: float = 0.5
    rois: int = 512
    roi_positive: float = 0.25


def encode_boxes(targets: torch.Tensor, boxes: torch.Tensor, weights: tuple[float, float, float, float]) -> torch.Tensor:
    """The deltas that ``ops.decode_boxes`` turns ``boxes`` (R, 4) into ``targets`` (R, 4) with."""
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
    t_widths, t_heights = targets[:, 2] - targets[:, 0], targets[:, 3] - targets[:, 1]
    t_cx, t_cy = targets[:, 0] + 0.5 * t_widths, targets[:, 1] + 0.5 * t_heights
    return torch.stack([weights[0] * (t_cx - cx) / widths, weights[1] * (t_cy - cy) / heights,
                        weights[2] * torch.log(t_widths / widths), weights[3] * torch.log(t_heights / heights)], dim=1)


def match(iou: torch.Tensor, high: float, low: float, best_too: bool) -> torch.Tensor:
    """For each column of ``iou`` (G, K), the ground truth it is matched to, ``BACKGROUND``
    below ``low``, ``IGNORED`` between ``low`` and ``high``; ``best_too``: each ground
    truth's best columns are matched to it whatever their IoU."""
    if iou.shape[0] == 0:
        return torch.full((iou.shape[1],), BACKGROUND, dtype=torch.int64)
    best, matched = iou.max(dim=0)
    out = matched.clone()
    out[best < high] = IGNORED
    out[best < low] = BACKGROUND
    if best_too:
        per_gt = iou.max(dim=1, keepdim=True).values
        _, column = torch.nonzero((iou == per_gt) & (per_gt > 0), as_tuple=True)
        out[column] = matched[column]
    return out


def sample(matched: torch.Tensor, batch: int, positive: float, generator: torch.Generator | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random foreground and background indices: ``positive`` of ``batch`` foreground at
    most, background for the rest."""
    fg = torch.nonzero(matched >= 0).flatten()
    bg = torch.nonzero(matched == BACKGROUND).flatten()
    n_fg = min(int(batch * positive), fg.numel())
    n_bg = min(batch - n_fg, bg.numel())
    fg = fg[torch.randperm(fg.numel(), generator=generator)[:n_fg]]
    bg = bg[torch.randperm(bg.numel(), generator=generator)[:n_bg]]
    return fg, bg


def _rpn_losses(model: MaskRCNN, features: list[torch.Tensor], targets: list[Targets], image_hw: tuple[int, int],
                config: SamplingConfig, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor,
                                                                                    list[torch.Tensor]]:
    raw = model.rpn.raw(features, image_hw)
    anchors, objectness, regression = torch.cat(raw[0]), torch.cat(raw[1], 1), torch.cat(raw[2], 1)
    with torch.no_grad():
        proposals = model.rpn.propose(raw[0], [o.detach() for o in raw[1]], [r.detach() for r in raw[2]], raw[3],
                                      image_hw)
    cls_losses, box_losses = [], []
    for i, target in enumerate(targets):
        matched = match(box_iou(target.boxes, anchors), config.rpn_high, config.rpn_low, best_too=True)
        fg, bg = sample(matched, config.rpn_batch, config.rpn_positive, generator)
        chosen = torch.cat([fg, bg])
        labels = torch.cat([torch.ones(fg.numel()), torch.zeros(bg.numel())])
        cls_losses.append(F.binary_cross_entropy_with_logits(objectness[i][chosen], labels))
        deltas = encode_boxes(target.boxes[matched[fg]], anchors[fg], RPN_WEIGHTS) if fg.numel() else \
            anchors.new_zeros((0, 4))
        box_losses.append(F.smooth_l1_loss(regression[i][fg], deltas, beta=SMOOTH_L1_BETA, reduction="sum")
                          / max(chosen.numel(), 1))
    return torch.stack(cls_losses).mean(), torch.stack(box_losses).mean(), proposals


def maskrcnn_losses(model: MaskRCNN, images: torch.Tensor, targets: list[Targets],
                    config: SamplingConfig = SamplingConfig(), generator: torch.Generator | None = None
                    ) -> dict[str, torch.Tensor]:
    """The five losses of one batch: ``rpn_objectness``, ``rpn_box``, ``classifier``,
    ``box`` and ``mask`` (sum them to train)."""
    image_hw = (int(images.shape[-2]), int(images.shape[-1]))
    features = model.backbone(images)
    rpn_cls, rpn_box, proposals = _rpn_losses(model, features, targets, image_hw, config, generator)
    heads = model.roi_heads
    levels = features[:4]
    cls_losses, box_losses, mask_losses = [], [], []
    for i, (rois, target) in enumerate(zip(proposals, targets)):
        rois = torch.cat([rois, target.boxes])
        matched = match(box_iou(target.boxes, rois), config.roi_iou, config.roi_iou, best_too=False)
        fg, bg = sample(matched, config.rois, config.roi_positive, generator)
        chosen = torch.cat([fg, bg])
        rois = rois[chosen]
        classes = torch.cat([target.classes[matched[fg]], torch.zeros(bg.numel(), dtype=torch.int64)])
        logits, deltas = heads.box_predictor(heads.box_head(heads._pool(levels, i, rois, 7, image_hw)))
        cls_losses.append(F.cross_entropy(logits, classes))
        n_fg = fg.numel()
        if n_fg == 0:
            box_losses.append(deltas.sum() * 0)
            mask_losses.append(sum(p.sum() for p in heads.mask_predictor.parameters()) * 0)
            continue
        fg_rois, fg_classes, fg_gt = rois[:n_fg], classes[:n_fg], matched[fg]
        chosen_deltas = deltas.reshape(deltas.shape[0], -1, 4)[torch.arange(n_fg), fg_classes]
        wanted = encode_boxes(target.boxes[fg_gt], fg_rois, ROI_WEIGHTS)
        box_losses.append(F.smooth_l1_loss(chosen_deltas, wanted, beta=SMOOTH_L1_BETA, reduction="sum")
                          / chosen.numel())
        mask_logits = heads.mask_predictor(heads.mask_head(heads._pool(levels, i, fg_rois, 14, image_hw)))
        with torch.no_grad():
            aligned = roi_align(target.masks, fg_rois, MASK_SIZE, 1.0)  # (P, G, 28, 28)
            mask_targets = aligned[torch.arange(n_fg), fg_gt]
        mask_losses.append(F.binary_cross_entropy_with_logits(mask_logits[torch.arange(n_fg), fg_classes],
                                                              mask_targets))
    return {"rpn_objectness": rpn_cls, "rpn_box": rpn_box, "classifier": torch.stack(cls_losses).mean(),
            "box": torch.stack(box_losses).mean(), "mask": torch.stack(mask_losses).mean()}
