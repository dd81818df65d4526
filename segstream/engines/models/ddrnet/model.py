"""DDRNet-23-slim: a shared stem, then a high-resolution branch (1/8) and a deep
low-resolution branch (1/16 -> 1/64) fused twice both ways, DAPPM context on the deep
branch, and a segmentation head on the sum at 1/8."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from segstream.engines.models.ddrnet.blocks import DAPPM, BasicBlock, BilateralFusion, Bottleneck2, stage
from segstream.engines.models.layers import ConvBNReLU, SegmentationHead, resize_to


@dataclass(frozen=True)
class DDRNetConfig:
    """DDRNet settings; ``width`` 32 is DDRNet-23-slim (64 is DDRNet-23)."""

    width: int = 32
    classes: int = 19
    head_channels: int = 64
    pyramid_channels: int = 128


class DDRNet(nn.Module):
    """(N, 3, H, W) -> (N, classes, H, W) logits; H and W multiples of 64."""

    def __init__(self, config: DDRNetConfig = DDRNetConfig()) -> None:
        super().__init__()
        w = config.width
        self.stem = nn.Sequential(ConvBNReLU(3, w, 3, 2), ConvBNReLU(w, w, 3, 2))  # 1/4
        self.layer1 = stage(BasicBlock, w, w, 2)
        self.layer2 = stage(BasicBlock, w, 2 * w, 2, stride=2)  # 1/8
        self.low3 = stage(BasicBlock, 2 * w, 4 * w, 2, stride=2)  # 1/16
        self.high3 = stage(BasicBlock, 2 * w, 2 * w, 2)
        self.fuse3 = BilateralFusion(2 * w, 4 * w, steps=1)
        self.low4 = stage(BasicBlock, 4 * w, 8 * w, 2, stride=2)  # 1/32
        self.high4 = stage(BasicBlock, 2 * w, 2 * w, 2)
        self.fuse4 = BilateralFusion(2 * w, 8 * w, steps=2)
        self.low5 = stage(Bottleneck2, 8 * w, 8 * w, 1, stride=2)  # 1/64, 16w channels
        self.high5 = stage(Bottleneck2, 2 * w, 2 * w, 1)  # 4w channels
        self.pyramid = DAPPM(16 * w, config.pyramid_channels, 4 * w)
        self.head = SegmentationHead(4 * w, config.head_channels, config.classes, dropout=0.0)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s8 = self.layer2(self.relu(self.layer1(self.stem(x))))
        high, low = self.fuse3(self.high3(self.relu(s8)), self.low3(self.relu(s8)))
        high, low = self.fuse4(self.high4(self.relu(high)), self.low4(self.relu(low)))
        high = self.high5(self.relu(high))
        context = resize_to(self.pyramid(self.low5(self.relu(low))), high)
        return self.head(high + context, x)
