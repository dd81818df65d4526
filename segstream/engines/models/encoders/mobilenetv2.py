"""MobileNetV2 encoder (Sandler et al., 2018), with dilation for output stride 8/16."""

from __future__ import annotations

import torch
from torch import nn

from segstream.engines.models.encoders.base import Encoder, dilations, entry_dilation
from segstream.engines.models.layers import ConvBNReLU

# expansion t, channels c, repeats n, stride s (the paper's table 2)
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
FEATURE_AFTER = (0, 1, 2, 4, 6)  # setting indices whose output is a feature map (strides 2, 4, 8, 16, 32)


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise, 1x1 linear projection; residual when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int, dilation: int = 1) -> None:
        super().__init__()
        hidden = in_ch * expand
        layers: list[nn.Module] = [] if expand == 1 else [ConvBNReLU(in_ch, hidden, 1)]
        layers += [ConvBNReLU(hidden, hidden, 3, stride, dilation, groups=hidden),
                   ConvBNReLU(hidden, out_ch, 1, relu=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2Encoder(Encoder):
    """Features at strides 2, 4, 8, 16, 32 (16, 24, 32, 96, 320 channels)."""

    def __init__(self, output_stride: int = 32) -> None:
        super().__init__()
        self.stem = ConvBNReLU(3, 32, 3, 2)
        (s16, d16), (s32, d32) = dilations(output_stride)
        override = {3: (s16, d16), 5: (s32, d32)}  # the stride-16 and stride-32 stages
        in_ch, stride, stages, strides = 32, 2, [], []
        for k, (t, c, n, s) in enumerate(SETTINGS):
            s, d = override.get(k, (s, 1))
            blocks = []
            for i in range(n):
                blocks.append(InvertedResidual(in_ch, c, s if i == 0 else 1, t, d if i else entry_dilation(s, d)))
                in_ch = c
            stages.append(nn.Sequential(*blocks))
            stride *= s
            if k in FEATURE_AFTER:
                strides.append(stride)
        self.stages = nn.ModuleList(stages)
        self.out_channels = tuple(SETTINGS[k][1] for k in FEATURE_AFTER)
        self.strides = tuple(strides)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for k, stage in enumerate(self.stages):
            x = stage(x)
            if k in FEATURE_AFTER:
                features.append(x)
        return features
