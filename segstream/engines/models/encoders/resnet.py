"""ResNet-18 and ResNet-50 encoders (He et al., 2016), with dilation for output stride 8/16."""

from __future__ import annotations

import torch
from torch import nn

from segstream.engines.models.encoders.base import Encoder, dilations, entry_dilation


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_ch: int, ch: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, ch, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_ch, ch * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4), with a residual connection (ResNet-50+)."""

    expansion = 4

    def __init__(self, in_ch: int, ch: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        out_ch = ch * self.expansion
        self.conv1 = nn.Conv2d(in_ch, ch, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)
        self.conv3 = nn.Conv2d(ch, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


LAYOUTS = {18: (BasicBlock, (2, 2, 2, 2)), 50: (Bottleneck, (3, 4, 6, 3))}


class ResNetEncoder(Encoder):
    """Features at strides 2, 4, 8, 16, 32 (or dilated for output stride 8/16).

    Args:
        depth: 18 or 50.
        output_stride: 8, 16 or 32.
    """

    def __init__(self, depth: int = 18, output_stride: int = 32) -> None:
        super().__init__()
        block, counts = LAYOUTS[depth]
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        self.pool = nn.MaxPool2d(3, 2, 1)
        plan = [(1, 1), (2, 1), *dilations(output_stride)]
        in_ch, layers, strides, stride = 64, [], [2, 4], 4
        for k, ((s, d), n) in enumerate(zip(plan, counts)):
            ch = 64 * 2 ** k
            blocks = [block(in_ch, ch, s, entry_dilation(s, d))]
            in_ch = ch * block.expansion
            blocks += [block(in_ch, ch, 1, d) for _ in range(n - 1)]
            layers.append(nn.Sequential(*blocks))
            stride *= s
            if k:
                strides.append(stride)
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.out_channels = (64, 64 * block.expansion, 128 * block.expansion, 256 * block.expansion,
                             512 * block.expansion)
        self.strides = tuple(strides)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        s2 = self.stem(x)
        s4 = self.layer1(self.pool(s2))
        s8 = self.layer2(s4)
        s16 = self.layer3(s8)
        return [s2, s4, s8, s16, self.layer4(s16)]
