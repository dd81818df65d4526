"""DeepLabV3+'s decoder: ASPP on the deep features, fused with stride-4 features."""

from __future__ import annotations

import torch
from torch import nn

from segstream.engines.models.deeplabv3plus.aspp import ASPP
from segstream.engines.models.layers import ConvBNReLU, resize_to


class DeepLabV3PlusDecoder(nn.Module):
    """(stride-4 features, deep features) -> (N, out_ch, H/4, W/4)."""

    def __init__(self, low_ch: int, deep_ch: int, rates: tuple[int, ...], aspp_ch: int = 256, low_proj: int = 48,
                 out_ch: int = 256) -> None:
        super().__init__()
        self.aspp = ASPP(deep_ch, aspp_ch, rates)
        self.low = ConvBNReLU(low_ch, low_proj, 1)
        self.fuse = nn.Sequential(ConvBNReLU(aspp_ch + low_proj, out_ch), ConvBNReLU(out_ch, out_ch))

    def forward(self, low: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        low = self.low(low)
        return self.fuse(torch.cat([resize_to(self.aspp(deep), low), low], dim=1))
