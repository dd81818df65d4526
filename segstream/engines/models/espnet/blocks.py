"""Building blocks of ESPNet (Mehta et al., ECCV 2018).

Attribute names follow the published checkpoints (``conv``, ``bn``, ``act``, ``c1``,
``d1`` ... ``d16``) so their state dicts load key for key. Batch norms use eps=1e-3 and
activations are PReLU, as in the original training code.
"""

from __future__ import annotations

import torch
from torch import nn

BN_EPS = 1e-3


class ConvBNPReLU(nn.Module):
    """Convolution (no bias), batch norm, PReLU. Keys: ``conv``, ``bn``, ``act``."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        pad = (kernel - 1) // 2
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=pad, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.act = nn.PReLU(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class BNPReLU(nn.Module):
    """Batch norm then PReLU. Keys: ``bn``, ``act``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


class Conv(nn.Module):
    """Plain convolution without bias, optionally dilated. Key: ``conv``."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        pad = ((kernel - 1) // 2) * dilation
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=pad, dilation=dilation, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _SpatialPyramid(nn.Module):
    """Reduce, then five parallel dilated 3x3 convolutions merged hierarchically (HFF)."""

    def __init__(self, reduce: Conv, out_ch: int) -> None:
        super().__init__()
        n = out_ch // 5
        n1 = out_ch - 4 * n
        self.c1 = reduce
        self.d1 = Conv(n, n1, 3, 1, 1)
        self.d2 = Conv(n, n, 3, 1, 2)
        self.d4 = Conv(n, n, 3, 1, 4)
        self.d8 = Conv(n, n, 3, 1, 8)
        self.d16 = Conv(n, n, 3, 1, 16)

    def pyramid(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.c1(x)
        add1 = self.d2(reduced)
        add2 = add1 + self.d4(reduced)
        add3 = add2 + self.d8(reduced)
        add4 = add3 + self.d16(reduced)
        return torch.cat([self.d1(reduced), add1, add2, add3, add4], 1)


class ESPDownsample(_SpatialPyramid):
    """Strided ESP block (halves the resolution). Keys: ``c1``, ``d*``, ``bn``, ``act``."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(Conv(in_ch, out_ch // 5, 3, 2), out_ch)
        self.bn = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.act = nn.PReLU(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.pyramid(x)))


class ESPBlock(_SpatialPyramid):
    """ESP block with optional residual connection. Keys: ``c1``, ``d*``, ``bn.bn``, ``bn.act``."""

    def __init__(self, in_ch: int, out_ch: int, residual: bool = True) -> None:
        super().__init__(Conv(in_ch, out_ch // 5, 1, 1), out_ch)
        self.bn = BNPReLU(out_ch)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        merged = self.pyramid(x)
        if self.residual:
            merged = x + merged
        return self.bn(merged)


class InputProjection(nn.Module):
    """The input image average-pooled ``times`` times by 2 (no parameters)."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.pool = nn.ModuleList(nn.AvgPool2d(3, stride=2, padding=1) for _ in range(times))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for pool in self.pool:
            x = pool(x)
        return x
