"""torchvision's Mask R-CNN weights into segstream's module.

The official COCO weights (``maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth``) use the layout
segstream's module has. Later torchvision versions wrap some convolutions in
``Conv2dNormActivation`` and save ``backbone.fpn.inner_blocks.0.0.weight``,
``rpn.head.conv.0.0.weight`` and ``roi_heads.mask_head.0.0.weight``; those names are
mapped back, so a state dict saved by either loads.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch

_MODERN = (
    (re.compile(r"^(backbone\.fpn\.(?:inner|layer)_blocks\.\d+)\.0\.(weight|bias)$"), r"\1.\2"),
    (re.compile(r"^rpn\.head\.conv\.0\.0\.(weight|bias)$"), r"rpn.head.conv.\1"),
)
_MASK_HEAD = re.compile(r"^roi_heads\.mask_head\.(\d+)\.0\.(weight|bias)$")


def segstream_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with torchvision's newer names mapped to the original layout (and the
    batch-norm counters, which frozen batch norm has not, left out)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        for pattern, replacement in _MODERN:
            key = pattern.sub(replacement, key)
        mask = _MASK_HEAD.match(key)
        if mask:
            key = f"roi_heads.mask_head.mask_fcn{int(mask.group(1)) + 1}.{mask.group(2)}"
        out[key] = value
    return out
