"""The ResNet body and the feature pyramid of Mask R-CNN, named as torchvision names them
(``backbone.body.layer1.0.conv1.weight``, ``backbone.fpn.inner_blocks.0.weight``...).

Batch norm is frozen (``FrozenBatchNorm2d``: its affine parameters and statistics are
buffers), as detection training does with ImageNet-initialised backbones, or trainable
(``nn.BatchNorm2d``, same keys) for a backbone trained from scratch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segstream.engines.models.encoders.resnet import LAYOUTS


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters (all buffers).

    Args:
        channels: the number of channels.
        eps: added to the variance (torchvision's detection models use 0.0 for the
            official COCO weights, 1e-5 otherwise).
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


def freeze_batchnorm(module: nn.Module, eps: float = 1e-5) -> nn.Module:
    """``module`` with every ``BatchNorm2d`` replaced by a ``FrozenBatchNorm2d`` (in place)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d(child.num_features, eps))
        else:
            freeze_batchnorm(child, eps)
    return module


class ResNetBody(nn.Module):
    """ResNet-18 or -50 up to ``layer4``, in torchvision's layout; returns the outputs of
    layer1-4 (strides 4, 8, 16, 32). ``frozen``: frozen batch norm."""

    def __init__(self, depth: int = 50, frozen: bool = True) -> None:
        super().__init__()
        block, counts = LAYOUTS[depth]
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch, channels = 64, []
        for k, n in enumerate(counts):
            ch = 64 * 2 ** k
            blocks = [block(in_ch, ch, 1 if k == 0 else 2)]
            in_ch = ch * block.expansion
            blocks += [block(in_ch, ch) for _ in range(n - 1)]
            setattr(self, f"layer{k + 1}", nn.Sequential(*blocks))
            channels.append(in_ch)
        self.out_channels = tuple(channels)
        if frozen:
            freeze_batchnorm(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for k in range(1, 5):
            x = getattr(self, f"layer{k}")(x)
            outs.append(x)
        return outs


class FeaturePyramid(nn.Module):
    """FPN (Lin et al., 2017): lateral 1x1 convolutions, top-down nearest upsampling, 3x3
    output convolutions, and a stride-2 max pool over the coarsest level (P6, for the RPN)."""

    def __init__(self, in_channels: tuple[int, ...], out_channels: int = 256) -> None:
        super().__init__()
        self.inner_blocks = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.layer_blocks = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        for conv in [*self.inner_blocks, *self.layer_blocks]:
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        inner = self.inner_blocks[-1](features[-1])
        results = [self.layer_blocks[-1](inner)]
        for k in range(len(features) - 2, -1, -1):
            lateral = self.inner_blocks[k](features[k])
            inner = lateral + F.interpolate(inner, size=lateral.shape[-2:], mode="nearest")
            results.insert(0, self.layer_blocks[k](inner))
        results.append(F.max_pool2d(results[-1], 1, 2, 0))
        return results


class BackboneWithFPN(nn.Module):
    """``body`` then ``fpn``: P2-P6 with ``out_channels`` channels each."""

    def __init__(self, depth: int = 50, out_channels: int = 256, frozen: bool = True) -> None:
        super().__init__()
        self.body = ResNetBody(depth, frozen)
        self.fpn = FeaturePyramid(self.body.out_channels, out_channels)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.fpn(self.body(x))
