"""Atrous spatial pyramid pooling with configurable rates."""

from __future__ import annotations

import torch
from torch import nn

from segstream.engines.models.layers import ConvBNReLU, global_pool, resize_to


class ImagePooling(nn.Module):
    """Global average pooling, 1x1 conv, ReLU, broadcast back to the feature size.

    No batch norm: on a 1x1 map with batch 1 it has nothing to normalise over.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize_to(self.conv(global_pool(x)), x)


class ASPP(nn.Module):
    """1x1 conv, one 3x3 atrous conv per rate, image pooling; concatenated and projected."""

    def __init__(self, in_ch: int, out_ch: int = 256, rates: tuple[int, ...] = (6, 12, 18), dropout: float = 0.1):
        super().__init__()
        branches: list[nn.Module] = [ConvBNReLU(in_ch, out_ch, 1)]
        branches += [ConvBNReLU(in_ch, out_ch, 3, dilation=r) for r in rates]
        branches.append(ImagePooling(in_ch, out_ch))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(ConvBNReLU(out_ch * len(branches), out_ch, 1), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))
