"""The encoder contract, and the encoder factory.

An encoder is an ``nn.Module`` that:

- takes a (N, 3, H, W) image tensor with H and W multiples of 32;
- returns a list of feature maps from fine to coarse, one per stage;
- declares ``out_channels`` (channels of each feature map) and ``strides`` (the input
  size divided by each map's size; a dilated stage keeps its input's stride), so decoders
  wire themselves without running the encoder.

``output_stride`` (8, 16 or 32) replaces the strides of the last stages by dilation, as
FCN-8s-style and DeepLab decoders need.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from segstream.errors import ModelError


class Encoder(nn.Module):
    """Base class: subclasses set ``out_channels`` and ``strides`` and implement forward."""

    out_channels: tuple[int, ...]
    strides: tuple[int, ...]


def _resnet(depth: int) -> Callable[[int], Encoder]:
    def build(output_stride: int) -> Encoder:
        from segstream.engines.models.encoders.resnet import ResNetEncoder

        return ResNetEncoder(depth, output_stride)

    return build


def _mobilenet_v2(output_stride: int) -> Encoder:
    from segstream.engines.models.encoders.mobilenetv2 import MobileNetV2Encoder

    return MobileNetV2Encoder(output_stride)


ENCODERS: dict[str, Callable[[int], Encoder]] = {
    "resnet18": _resnet(18),
    "resnet50": _resnet(50),
    "mobilenetv2": _mobilenet_v2,
}


def build_encoder(name: str, output_stride: int = 32) -> Encoder:
    """An encoder by name; the error lists the valid names and strides."""
    if name not in ENCODERS:
        raise ModelError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    if output_stride not in (8, 16, 32):
        raise ModelError(f"output_stride must be 8, 16 or 32, found {output_stride}")
    return ENCODERS[name](output_stride)


def dilations(output_stride: int, stages: int = 2) -> list[tuple[int, int]]:
    """(stride, dilation) of the last ``stages`` stride-2 stages for an output stride.

    Example:
        >>> dilations(8)
        [(1, 2), (1, 4)]
        >>> dilations(16)
        [(2, 1), (1, 2)]
    """
    plan, dilation = [], 1
    for k in range(stages):
        stage_stride = 32 // 2 ** (stages - 1 - k)  # the stride this stage reaches undilated: 16, 32
        if stage_stride > output_stride:
            dilation *= 2
            plan.append((1, dilation))
        else:
            plan.append((2, dilation))
    return plan


def entry_dilation(stride: int, dilation: int) -> int:
    """Dilation of a stage's first block: a stage dilated instead of strided enters with
    the previous stage's dilation, so the receptive field grows without gaps."""
    return dilation // 2 if stride == 1 and dilation > 1 else dilation
