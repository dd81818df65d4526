"""The models segstream knows by name.

The factory is a literal dict: adding a model means adding one ``ModelSpec`` here. Torch
is imported only when a model is built, never when the zoo is listed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from segstream.engines import cityscapes
from segstream.engines.metadata import (
    ChannelOrder,
    ModelError,
    ModelMetadata,
    NormalizeOrder,
    OutputKind,
    OutputSpec,
)

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)

# ESPNet's Cityscapes training statistics, BGR order, 0-255 range (data README).
ESPNET_MEAN = (72.3923111, 82.90893555, 73.15840149)
ESPNET_STD = (45.3192215, 46.15289307, 44.91483307)


@dataclass(frozen=True)
class ModelSpec:
    """A named model: how to build it, where its weights are, and its metadata.

    Attributes:
        name: the name users pass to ``--model``.
        description: one line for ``segstream models``.
        build: returns the untrained ``nn.Module`` (imports torch lazily).
        weights_asset: key in ``segstream.assets.ASSETS`` of the pretrained weights, or None.
        metadata: metadata of the exported model.
        size_multiple: input sides must be multiples of this.
    """

    name: str
    description: str
    build: Callable[[], "nn.Module"]
    weights_asset: str | None
    metadata: ModelMetadata
    size_multiple: int = 8


def _espnet(q: int) -> Callable[[], "nn.Module"]:
    def build() -> "nn.Module":
        from segstream.engines.espnet import ESPNet

        return ESPNet(classes=20, p=2, q=q)

    return build


def _espnet_metadata(name: str) -> ModelMetadata:
    return ModelMetadata(
        name=name,
        input_name="image",
        input_width=1024,
        input_height=512,
        channel_order=ChannelOrder.BGR,
        mean=ESPNET_MEAN,
        std=ESPNET_STD,
        scale=1.0 / 255.0,
        normalize_order=NormalizeOrder.STANDARDIZE_THEN_SCALE,
        class_names=cityscapes.CLASS_NAMES,
        palette=cityscapes.PALETTE_BGR,
        outputs=(OutputSpec("labels", OutputKind.CLASS_IDS),),
        ignore_index=cityscapes.IGNORE_INDEX,
        ignore_channel=19,
        extra={"dataset": "cityscapes", "label_space": "cityscapes-train-ids"},
    )


MODELS: dict[str, ModelSpec] = {
    "espnet-cityscapes": ModelSpec(
        "espnet-cityscapes",
        "ESPNet p=2 q=8, Cityscapes 19 classes, 1024x512 (test mIoU 60.3)",
        _espnet(8),
        "espnet_p_2_q_8.pth",
        _espnet_metadata("espnet-cityscapes"),
    ),
    "espnet-cityscapes-q3": ModelSpec(
        "espnet-cityscapes-q3",
        "ESPNet p=2 q=3 (smaller, faster), Cityscapes 19 classes, 1024x512",
        _espnet(3),
        "espnet_p_2_q_3.pth",
        _espnet_metadata("espnet-cityscapes-q3"),
    ),
}


def get_model_spec(name: str) -> ModelSpec:
    """Look up a model by name; the error lists the valid names."""
    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(
            f"unknown model {name!r}; known models: {', '.join(MODELS)}. "
            f"Pass a path to an .onnx file that carries segstream metadata to use your own"
        ) from None
