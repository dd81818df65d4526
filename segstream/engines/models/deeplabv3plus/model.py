"""DeepLabV3+: encoder -> decoder (ASPP + stride-4 skip) -> 1x1 classifier -> upsampling."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from segstream.engines.models.deeplabv3plus.decoder import DeepLabV3PlusDecoder
from segstream.engines.models.encoders.base import build_encoder
from segstream.engines.models.layers import resize_to


@dataclass(frozen=True)
class DeepLabV3PlusConfig:
    """DeepLabV3+ settings: ``backbone`` resnet18/resnet50/mobilenetv2, ASPP ``rates``
    (for output stride 16; double them for 8), ``output_stride`` 8 or 16."""

    backbone: str = "resnet50"
    rates: tuple[int, ...] = (6, 12, 18)
    output_stride: int = 16
    classes: int = 19
    channels: int = 256


class DeepLabV3Plus(nn.Module):
    """(N, 3, H, W) -> (N, classes, H, W) logits."""

    def __init__(self, config: DeepLabV3PlusConfig = DeepLabV3PlusConfig()) -> None:
        super().__init__()
        self.encoder = build_encoder(config.backbone, config.output_stride)
        low = self.encoder.strides.index(4)
        self._low = low
        self.decoder = DeepLabV3PlusDecoder(self.encoder.out_channels[low], self.encoder.out_channels[-1],
                                            config.rates, config.channels, out_ch=config.channels)
        self.classifier = nn.Conv2d(config.channels, config.classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        return resize_to(self.classifier(self.decoder(features[self._low], features[-1])), x)
