"""ESPNet encoder-decoder, wired from the blocks in ``blocks.py``.

The module tree mirrors the published checkpoints (``encoder.level1`` ... ``classifier``),
so ``load_state_dict(strict=True)`` accepts them. Output: ``classes`` logits at the input
resolution.
"""

from __future__ import annotations

import torch
from torch import nn

from segstream.engines.models.espnet.blocks import (
    BNPReLU,
    Conv,
    ConvBNPReLU,
    ESPBlock,
    ESPDownsample,
    InputProjection,
)


class ESPNetEncoder(nn.Module):
    """ESPNet-C: three levels of ESP blocks with input reinforcement; 1/8 resolution logits."""

    def __init__(self, classes: int = 20, p: int = 2, q: int = 3) -> None:
        super().__init__()
        self.level1 = ConvBNPReLU(3, 16, 3, 2)
        self.sample1 = InputProjection(1)
        self.sample2 = InputProjection(2)
        self.b1 = BNPReLU(16 + 3)
        self.level2_0 = ESPDownsample(16 + 3, 64)
        self.level2 = nn.ModuleList(ESPBlock(64, 64) for _ in range(p))
        self.b2 = BNPReLU(128 + 3)
        self.level3_0 = ESPDownsample(128 + 3, 128)
        self.level3 = nn.ModuleList(ESPBlock(128, 128) for _ in range(q))
        self.b3 = BNPReLU(256)
        self.classifier = Conv(256, classes, 1, 1)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Level-1 output, level-1/2/3 concatenations (before the classifier)."""
        out0 = self.level1(x)
        cat0 = self.b1(torch.cat([out0, self.sample1(x)], 1))
        down1 = self.level2_0(cat0)
        out1 = down1
        for block in self.level2:
            out1 = block(out1)
        cat1 = self.b2(torch.cat([out1, down1, self.sample2(x)], 1))
        down2 = self.level3_0(cat1)
        out2 = down2
        for block in self.level3:
            out2 = block(out2)
        cat2 = self.b3(torch.cat([down2, out2], 1))
        return out0, cat0, cat1, cat2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x)[3])


class ESPNet(nn.Module):
    """Full ESPNet: encoder plus the light-weight decoder of the paper.

    Args:
        classes: number of output channels (20 for the Cityscapes checkpoints).
        p: ESP blocks at level 2.
        q: ESP blocks at level 3 (8 or 3 for the published checkpoints).

    Example:
        >>> net = ESPNet(classes=20, p=2, q=3).eval()
        >>> net(torch.zeros(1, 3, 64, 128)).shape
        torch.Size([1, 20, 64, 128])
    """

    def __init__(self, classes: int = 20, p: int = 2, q: int = 8) -> None:
        super().__init__()
        self.encoder = ESPNetEncoder(classes, p, q)
        self.level3_C = Conv(128 + 3, classes, 1, 1)
        self.br = nn.BatchNorm2d(classes, eps=1e-3)
        self.conv = ConvBNPReLU(16 + classes, classes, 3, 1)
        self.up_l3 = nn.Sequential(nn.ConvTranspose2d(classes, classes, 2, stride=2, bias=False))
        self.combine_l2_l3 = nn.Sequential(BNPReLU(2 * classes), ESPBlock(2 * classes, classes, residual=False))
        self.up_l2 = nn.Sequential(nn.ConvTranspose2d(classes, classes, 2, stride=2, bias=False), BNPReLU(classes))
        self.classifier = nn.ConvTranspose2d(classes, classes, 2, stride=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out0, _cat0, cat1, cat2 = self.encoder.features(x)
        up3 = self.up_l3(self.br(self.encoder.classifier(cat2)))
        comb = self.up_l2(self.combine_l2_l3(torch.cat([self.level3_C(cat1), up3], 1)))
        return self.classifier(self.conv(torch.cat([comb, out0], 1)))
