"""The models segstream knows by name.

The factory is a literal dict: adding a model means adding one ``ModelSpec`` here. Torch
is imported only when a model is built, never when the zoo is listed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from segstream.datasets import cityscapes
from segstream.datasets.coco import COCO_CLASS_NAMES, coco_palette
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
        task: what ``build()``'s module returns for a (N, 3, H, W) image:
            ``segmentation``: (N, C, H, W) logits; ``classification``: (N, K) logits;
            ``joint``: both, as a tuple; ``instances``: a dict of padded detections (boxes,
            scores, classes, masks, count; see ``models/maskrcnn/model.py``).
        architecture: the family, for listings.
        params: trainable parameters of ``build()``'s module (listed without building it;
            the zoo contract test checks the number).
        weights_source: for a model without ``weights_asset``, where trained weights for it
            come from (said when it is asked to run without ``--weights``).
    """

    name: str
    description: str
    build: Callable[[], "nn.Module"]
    weights_asset: str | None
    metadata: ModelMetadata
    size_multiple: int = 8
    task: str = "segmentation"
    architecture: str = "espnet"
    params: int = 0
    weights_source: str = ""

    @property
    def usable_as_is(self) -> bool:
        """Trained weights are known for it (it runs without ``--weights``)."""
        return self.weights_asset is not None

    def split_outputs(self, out: object) -> tuple[object, object]:
        """``(segmentation logits or None, classification logits or None)`` from what the
        built module returned for this spec's ``task``."""
        if self.task == "joint":
            seg, cls = out  # type: ignore[misc]
            return seg, cls
        return (out, None) if self.task == "segmentation" else (None, out)


def _espnet(q: int) -> Callable[[], "nn.Module"]:
    def build() -> "nn.Module":
        from segstream.engines.models.espnet import ESPNet

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


# torchvision-style ImageNet statistics, RGB, for the models trained here from scratch or
# fine-tuned from ImageNet backbones.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SCENE_LABELS = ("highway", "urban", "residential")
SEGMENTATION_OUTPUT = OutputSpec("labels", OutputKind.CLASS_IDS)
CLASSIFICATION_OUTPUT = OutputSpec("scores", OutputKind.CLASSIFICATION_SCORES)


def _metadata(name: str, width: int, height: int, segments: bool = True, labels: tuple[str, ...] = ()) -> ModelMetadata:
    outputs = ((SEGMENTATION_OUTPUT,) if segments else ()) + ((CLASSIFICATION_OUTPUT,) if labels else ())
    return ModelMetadata(
        name=name, input_name="image", input_width=width, input_height=height, channel_order=ChannelOrder.RGB,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, scale=1.0 / 255.0, normalize_order=NormalizeOrder.SCALE_THEN_STANDARDIZE,
        class_names=cityscapes.CLASS_NAMES if segments else (), palette=cityscapes.PALETTE_BGR if segments else (),
        outputs=outputs, ignore_index=cityscapes.IGNORE_INDEX, label_names=labels, top_k=min(5, len(labels) or 5),
        extra={"dataset": "cityscapes", "label_space": "cityscapes-train-ids"} if segments else {},
        resize_precision="uint8",  # the trainer (training/data.py) resizes 8-bit images too
    )


def _builder(module: str, cls: str, config: str, **kwargs: object) -> Callable[[], "nn.Module"]:
    """A build function that imports the architecture (and torch) only when called."""

    def build() -> "nn.Module":
        import importlib

        mod = importlib.import_module(f"segstream.engines.models.{module}.model")
        return getattr(mod, cls)(getattr(mod, config)(**kwargs))

    return build


# Where the weights of a zoo model without a known download come from.
TRAIN_IT = ("no published weights in this layout: train it with `segstream train {name} --data "
            "cityscapes:ROOT` (README: Models) and pass --weights segstream-train/best.pt")


def _segmenter(name: str, description: str, architecture: str, build: Callable[[], "nn.Module"],
               size_multiple: int = 32, params: int = 0) -> ModelSpec:
    return ModelSpec(name, description, build, None, _metadata(name, 1024, 512), size_multiple, "segmentation",
                     architecture, params, TRAIN_IT.format(name=name))


MODELS: dict[str, ModelSpec] = {
    "espnet-cityscapes": ModelSpec(
        "espnet-cityscapes",
        "ESPNet p=2 q=8, Cityscapes 19 classes, 1024x512 (test mIoU 60.3)",
        _espnet(8),
        "espnet_p_2_q_8.pth",
        _espnet_metadata("espnet-cityscapes"),
        params=364_569,
    ),
    "espnet-cityscapes-q3": ModelSpec(
        "espnet-cityscapes-q3",
        "ESPNet p=2 q=3 (smaller, faster), Cityscapes 19 classes, 1024x512",
        _espnet(3),
        "espnet_p_2_q_3.pth",
        _espnet_metadata("espnet-cityscapes-q3"),
        params=202_649,
    ),
    "fcn-resnet18": _segmenter("fcn-resnet18", "FCN, ResNet-18, output stride 8, Cityscapes 19 classes", "fcn",
                               _builder("fcn", "FCN", "FCNConfig", backbone="resnet18", output_stride=8),
                               params=11_769_043),
    "fcn-resnet18-os32": _segmenter("fcn-resnet18-os32", "FCN-32s, ResNet-18, output stride 32", "fcn",
                                    _builder("fcn", "FCN", "FCNConfig", backbone="resnet18", output_stride=32),
                                    params=11_769_043),
    "fcn-resnet50": _segmenter("fcn-resnet50", "FCN, ResNet-50, output stride 8", "fcn",
                               _builder("fcn", "FCN", "FCNConfig", backbone="resnet50", output_stride=8),
                               params=32_955_987),
    "unet": _segmenter("unet", "U-Net, width 32, depth 4", "unet", _builder("unet", "UNet", "UNetConfig"), 16,
                       params=7_850_195),
    "deeplabv3plus-resnet50": _segmenter(
        "deeplabv3plus-resnet50", "DeepLabV3+, ResNet-50, output stride 16, ASPP rates 6/12/18", "deeplabv3plus",
        _builder("deeplabv3plus", "DeepLabV3Plus", "DeepLabV3PlusConfig", backbone="resnet50"),
        params=40_351_411),
    "deeplabv3plus-mobilenetv2": _segmenter(
        "deeplabv3plus-mobilenetv2", "DeepLabV3+, MobileNetV2, output stride 16, ASPP rates 6/12/18",
        "deeplabv3plus", _builder("deeplabv3plus", "DeepLabV3Plus", "DeepLabV3PlusConfig", backbone="mobilenetv2"),
        params=5_815_283),
    "ddrnet23-slim": _segmenter("ddrnet23-slim", "DDRNet-23-slim, real-time two-branch network for driving scenes",
                                "ddrnet", _builder("ddrnet", "DDRNet", "DDRNetConfig"), 64, params=5_694_643),
    "resnet18-classifier": ModelSpec(
        "resnet18-classifier", "ResNet-18 image classifier (scene type: highway/urban/residential), top-k scores",
        _builder("classifier", "Classifier", "ClassifierConfig", classes=len(SCENE_LABELS)), None,
        _metadata("resnet18-classifier", 448, 224, segments=False, labels=SCENE_LABELS), 32, "classification",
        "classifier", 11_178_051, TRAIN_IT.format(name="resnet18-classifier").replace(
            "cityscapes:ROOT", "ROOT (ROOT/<label>/*.png)")),
    "joint-resnet18": ModelSpec(
        "joint-resnet18", "ResNet-18 shared encoder: Cityscapes segmentation + scene type in one call",
        _builder("joint", "JointSegClassifier", "JointConfig", labels=len(SCENE_LABELS)), None,
        _metadata("joint-resnet18", 1024, 512, labels=SCENE_LABELS), 32, "joint", "joint", 13_518_262,
        TRAIN_IT.format(name="joint-resnet18").replace("cityscapes:ROOT", "ROOT (ROOT/<label>/*.png)")),
}


INSTANCE_OUTPUTS = (OutputSpec("boxes", OutputKind.INSTANCE_BOXES), OutputSpec("scores", OutputKind.INSTANCE_SCORES),
                    OutputSpec("classes", OutputKind.INSTANCE_CLASSES), OutputSpec("masks", OutputKind.INSTANCE_MASKS),
                    OutputSpec("count", OutputKind.INSTANCE_COUNT))
INSTANCE_DEFAULTS = {"score_threshold": 0.5, "mask_threshold": 0.5}


def _instance_metadata(name: str, width: int, height: int, detections: int) -> ModelMetadata:
    """Mask R-CNN on COCO's classes: torchvision's normalisation (RGB, ImageNet statistics);
    ``extra`` holds the thresholds the pipeline applies and the padded detection count."""
    return ModelMetadata(
        name=name, input_name="image", input_width=width, input_height=height, channel_order=ChannelOrder.RGB,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, scale=1.0 / 255.0, normalize_order=NormalizeOrder.SCALE_THEN_STANDARDIZE,
        class_names=COCO_CLASS_NAMES, palette=coco_palette(len(COCO_CLASS_NAMES)), outputs=INSTANCE_OUTPUTS,
        resize_precision="uint8", extra={"dataset": "coco", "task": "instances", "detections": detections,
                                         **INSTANCE_DEFAULTS})


def _maskrcnn(name: str, description: str, width: int, height: int, params: int, source: str,
              **config: object) -> ModelSpec:
    return ModelSpec(name, description, _builder("maskrcnn", "MaskRCNN", "MaskRCNNConfig", **config), None,
                     _instance_metadata(name, width, height, 100), 32, "instances", "maskrcnn", params, source)


# torchvision publishes its COCO Mask R-CNN weights under a name that ends in the first 8 hex
# digits of the file's sha256 (torchvision.models.detection.MaskRCNN_ResNet50_FPN_Weights.COCO_V1).
MASKRCNN_COCO_WEIGHTS = ("torchvision's COCO weights: download "
                         "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth (its sha256 "
                         "starts with bf2d0c1e, as the name says; COCO box AP 37.9, mask AP 34.6 as torchvision "
                         "reports them) and pass --weights maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth")


MODELS.update({
    "maskrcnn-r50-fpn": _maskrcnn(
        "maskrcnn-r50-fpn", "Mask R-CNN, ResNet-50-FPN, COCO 91 classes (torchvision's layout: its COCO weights load "
        "with --weights)", 1344, 768, 44_401_393, MASKRCNN_COCO_WEIGHTS),
    "maskrcnn-r18-fpn": _maskrcnn(
        "maskrcnn-r18-fpn", "Mask R-CNN, ResNet-18-FPN with 128 channels, for CPUs, COCO classes (train it: "
        "segstream train)", 512, 288, 20_647_025,
        "no published weights: train it with `segstream train maskrcnn-r18-fpn --data coco:ROOT[:SPLIT] --optimizer "
        "sgd --lr 0.02` (README: Instance segmentation) and pass --weights segstream-train/best.pt",
        depth=18, channels=128, frozen_norm=False, pre_nms=500, post_nms=300),
})


def untrained_error(spec: ModelSpec) -> ModelError:
    """The error for a zoo model asked to run without trained weights: where its weights
    come from, and how to run it untrained on purpose."""
    return ModelError(
        f"model {spec.name!r} has no trained weights here: {spec.weights_source}. To run it untrained on purpose "
        f"(random weights: its masks mean nothing), pass --random-weights. `segstream models` lists which models "
        f"run as they are"
    )


def get_model_spec(name: str) -> ModelSpec:
    """Look up a model by name; the error lists the valid names."""
    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(
            f"unknown model {name!r}; known models: {', '.join(MODELS)}. "
            f"Pass a path to an .onnx file that carries segstream metadata to use your own"
        ) from None
