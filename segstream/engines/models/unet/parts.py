"""U-Net's parts: a double convolution, a down step and an up step with a skip."""

from __future__ import annotations

import torch
from torch import nn

from segstream.engines.models.layers import ConvBNReLU, resize_to


class DoubleConv(nn.Sequential):
    """Two 3x3 conv-BN-ReLU blocks."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(ConvBNReLU(in_ch, out_ch), ConvBNReLU(out_ch, out_ch))


class Down(nn.Sequential):
    """2x2 max pooling, then a double convolution."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_ch, out_ch))


class Up(nn.Module):
    """Bilinear upsampling to the skip's size, concatenation, double convolution."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = DoubleConv(in_ch + skip_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([resize_to(x, skip), skip], dim=1))
