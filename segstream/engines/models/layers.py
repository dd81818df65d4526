"""Small layers shared by the zoo's architectures (torch is imported by whoever imports this)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBNReLU(nn.Sequential):
    """Convolution (no bias), batch norm, ReLU; 'same' padding for odd kernels."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, dilation: int = 1,
                 groups: int = 1, relu: bool = True) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel, stride, padding=dilation * (kernel - 1) // 2, dilation=dilation,
                      groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def resize_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of ``x`` to the spatial size of ``like`` (an explicit ONNX Resize:
    linear, half-pixel; exports with dynamic sizes)."""
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


def global_pool(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling as a mean (ONNX ReduceMean; no adaptive pooling)."""
    return x.mean(dim=(2, 3), keepdim=True)


class SegmentationHead(nn.Module):
    """3x3 conv block, dropout, 1x1 classifier; logits upsampled to the input's size."""

    def __init__(self, in_ch: int, mid_ch: int, classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.block = ConvBNReLU(in_ch, mid_ch, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(mid_ch, classes, 1)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return resize_to(self.classifier(self.dropout(self.block(x))), image)


class ClassificationHead(nn.Module):
    """Global average pooling, dropout, linear: (N, C, H, W) features to (N, K) logits."""

    def __init__(self, in_ch: int, classes: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_ch, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(global_pool(x), 1)))
