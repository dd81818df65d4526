"""FCN: encoder -> FCN head on the last feature map -> bilinear upsampling to the input."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from segstream.engines.models.encoders.base import build_encoder
from segstream.engines.models.layers import SegmentationHead


@dataclass(frozen=True)
class FCNConfig:
    """FCN settings: ``backbone`` resnet18/resnet50, ``output_stride`` 8 or 32."""

    backbone: str = "resnet18"
    output_stride: int = 8
    classes: int = 19


class FCN(nn.Module):
    """(N, 3, H, W) -> (N, classes, H, W) logits."""

    def __init__(self, config: FCNConfig = FCNConfig()) -> None:
        super().__init__()
        self.encoder = build_encoder(config.backbone, config.output_stride)
        last = self.encoder.out_channels[-1]
        self.head = SegmentationHead(last, last // 4, config.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)[-1], x)
