"""ResNet classifier: encoder -> global average pooling -> linear; top-k labels with scores
come from the exported softmax."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from segstream.engines.models.encoders.base import build_encoder
from segstream.engines.models.layers import ClassificationHead


@dataclass(frozen=True)
class ClassifierConfig:
    """Classifier settings: ``backbone`` and the number of ``classes``."""

    backbone: str = "resnet18"
    classes: int = 3


class Classifier(nn.Module):
    """(N, 3, H, W) -> (N, classes) logits."""

    def __init__(self, config: ClassifierConfig = ClassifierConfig()) -> None:
        super().__init__()
        self.encoder = build_encoder(config.backbone, 32)
        self.head = ClassificationHead(self.encoder.out_channels[-1], config.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)[-1])
