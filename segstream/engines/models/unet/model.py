"""U-Net: a four-step contracting path, a symmetric expanding path with skips, a 1x1 head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from segstream.engines.models.unet.parts import DoubleConv, Down, Up


@dataclass(frozen=True)
class UNetConfig:
    """U-Net settings: ``width`` channels at full resolution (doubling per step)."""

    width: int = 32
    depth: int = 4
    classes: int = 19


class UNet(nn.Module):
    """(N, 3, H, W) -> (N, classes, H, W) logits; H and W multiples of 2**depth."""

    def __init__(self, config: UNetConfig = UNetConfig()) -> None:
        super().__init__()
        widths = [config.width * 2 ** k for k in range(config.depth + 1)]
        self.inc = DoubleConv(3, widths[0])
        self.downs = nn.ModuleList(Down(widths[k], widths[k + 1]) for k in range(config.depth))
        self.ups = nn.ModuleList(Up(widths[k + 1], widths[k], widths[k]) for k in reversed(range(config.depth)))
        self.head = nn.Conv2d(widths[0], config.classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        return self.head(y)
