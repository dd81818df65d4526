"""DDRNet's parts: residual stages, bilateral fusion and the deep aggregation pyramid."""

from __future__ import annotations

import torch
from torch import nn

from segstream.engines.models.encoders.resnet import BasicBlock, Bottleneck
from segstream.engines.models.layers import ConvBNReLU, global_pool, resize_to


class Bottleneck2(Bottleneck):
    """DDRNet's bottleneck expands x2, not x4."""

    expansion = 2


def stage(block: type[nn.Module], in_ch: int, ch: int, blocks: int, stride: int = 1) -> nn.Sequential:
    """``blocks`` residual blocks; the first may stride."""
    expansion = block.expansion  # type: ignore[attr-defined]
    layers = [block(in_ch, ch, stride)]
    layers += [block(ch * expansion, ch) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class BilateralFusion(nn.Module):
    """Exchange between the branches: low -> high by 1x1 compression and upsampling,
    high -> low by strided 3x3 convolutions (``steps`` of them)."""

    def __init__(self, high_ch: int, low_ch: int, steps: int) -> None:
        super().__init__()
        self.compress = ConvBNReLU(low_ch, high_ch, 1, relu=False)
        down: list[nn.Module] = []
        ch = high_ch
        for k in range(steps):
            last = k == steps - 1
            out = low_ch if last else ch * 2
            down.append(ConvBNReLU(ch, out, 3, 2, relu=not last))
            ch = out
        self.down = nn.Sequential(*down)

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return high + resize_to(self.compress(low), high), low + self.down(high)


class GlobalBranch(nn.Module):
    """Global average pooling, ReLU, 1x1 conv (no batch norm: a 1x1 map with batch 1
    has nothing to normalise over)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.ReLU(), nn.Conv2d(in_ch, out_ch, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(global_pool(x))


class DAPPM(nn.Module):
    """Deep aggregation pyramid pooling: pooled context at several scales, each fused
    hierarchically with the previous one, compressed, plus a shortcut."""

    def __init__(self, in_ch: int, branch_ch: int, out_ch: int) -> None:
        super().__init__()
        self.scale0 = nn.Sequential(nn.BatchNorm2d(in_ch), nn.ReLU(), nn.Conv2d(in_ch, branch_ch, 1, bias=False))
        self.scales = nn.ModuleList([_avg_branch(in_ch, branch_ch, k, s) for k, s in ((5, 2), (9, 4), (17, 8))]
                                    + [GlobalBranch(in_ch, branch_ch)])
        self.process = nn.ModuleList(_bn_relu_conv(branch_ch, branch_ch, 3) for _ in range(4))
        self.compression = _bn_relu_conv(branch_ch * 5, out_ch, 1)
        self.shortcut = _bn_relu_conv(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [self.scale0(x)]
        for scale, process in zip(self.scales, self.process):
            outs.append(process(resize_to(scale(x), x) + outs[-1]))
        return self.compression(torch.cat(outs, dim=1)) + self.shortcut(x)


def _avg_branch(in_ch: int, out_ch: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.AvgPool2d(kernel, stride, kernel // 2), nn.BatchNorm2d(in_ch), nn.ReLU(),
                         nn.Conv2d(in_ch, out_ch, 1, bias=False))


def _bn_relu_conv(in_ch: int, out_ch: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(in_ch), nn.ReLU(), nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2,
                                                                       bias=False))


__all__ = ["BasicBlock", "Bottleneck2", "BilateralFusion", "DAPPM", "stage"]
