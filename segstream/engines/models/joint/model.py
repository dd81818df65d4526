"""Joint model: one shared encoder; a DeepLabV3+ segmentation decoder and a classification
head (e.g. scene type) read the same features, so one forward pass yields both."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from segstream.engines.models.deeplabv3plus.decoder import DeepLabV3PlusDecoder
from segstream.engines.models.encoders.base import build_encoder
from segstream.engines.models.layers import ClassificationHead, resize_to


@dataclass(frozen=True)
class JointConfig:
    """Joint settings: shared ``backbone``, segmentation ``classes``, image ``labels``."""

    backbone: str = "resnet18"
    classes: int = 19
    labels: int = 3
    rates: tuple[int, ...] = (6, 12, 18)
    channels: int = 128


class JointSegClassifier(nn.Module):
    """(N, 3, H, W) -> ((N, classes, H, W) segmentation logits, (N, labels) logits)."""

    def __init__(self, config: JointConfig = JointConfig()) -> None:
        super().__init__()
        self.encoder = build_encoder(config.backbone, 16)
        ch = self.encoder.out_channels
        self.decoder = DeepLabV3PlusDecoder(ch[1], ch[-1], config.rates, config.channels, out_ch=config.channels)
        self.segmentation = nn.Conv2d(config.channels, config.classes, 1)
        self.classification = ClassificationHead(ch[-1], config.labels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder(x)
        seg = resize_to(self.segmentation(self.decoder(features[1], features[-1])), x)
        return seg, self.classification(features[-1])
