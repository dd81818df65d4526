"""Model metadata: everything a stage needs to feed a model and read its outputs.

The metadata travels with the model (inside the ONNX file as the ``segstream`` metadata
property, or in a ``FILE.json`` sidecar), so preprocessing and postprocessing are driven by
it and never hard-coded per model in a stage.

Example:
    >>> meta = ModelMetadata.from_json(ModelMetadata.example().to_json())
    >>> meta.input_width, meta.input_height
    (1024, 512)
"""

from __future__ import annotations

import json
import logging
import mmap
import os
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Iterator, Mapping

from segstream.errors import ModelError

logger = logging.getLogger(__name__)

METADATA_KEY = "segstream"
METADATA_VERSION = 1


class ChannelOrder(str, Enum):
    """Channel order the model expects (frames arrive as BGR from OpenCV)."""

    BGR = "BGR"
    RGB = "RGB"


class NormalizeOrder(str, Enum):
    """Where the scale factor is applied relative to mean/std standardisation.

    ``STANDARDIZE_THEN_SCALE``: ``((x - mean) / std) * scale`` (ESPNet's training code).
    ``SCALE_THEN_STANDARDIZE``: ``(x * scale - mean) / std`` (torchvision style).
    Resizing is linear, so it commutes with both and its position does not matter.
    """

    STANDARDIZE_THEN_SCALE = "standardize_then_scale"
    SCALE_THEN_STANDARDIZE = "scale_then_standardize"


class OutputKind(str, Enum):
    """What an output tensor holds."""

    CLASS_IDS = "class_ids"  # (N, H, W) integer label map, already argmaxed
    SEGMENTATION_LOGITS = "segmentation_logits"  # (N, C, H, W)
    CLASSIFICATION_LOGITS = "classification_logits"  # (N, K)
    CLASSIFICATION_SCORES = "classification_scores"  # (N, K) softmax probabilities
    CONFIDENCE = "confidence"  # (N, H, W) uint8: the winning class's probability x 255
    # Instance models (Mask R-CNN): D detections per image, padded with zeros after ``count``.
    INSTANCE_BOXES = "instance_boxes"  # (N, D, 4) float32, (x0, y0, x1, y1) in input pixels
    INSTANCE_SCORES = "instance_scores"  # (N, D) float32
    INSTANCE_CLASSES = "instance_classes"  # (N, D) int64, 1-based (0: background / padding)
    INSTANCE_MASKS = "instance_masks"  # (N, D, M, M) float32: mask probability within the box
    INSTANCE_COUNT = "instance_count"  # (N,) int64: how many of the D are detections


@dataclass(frozen=True)
class OutputSpec:
    """One model output: its tensor name and what it holds."""

    name: str
    kind: OutputKind

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", OutputKind(self.kind))


RESIZE_PRECISIONS = ("float", "uint8")


RANDOM_WEIGHTS = "random"  # extra["weights"] of a model exported untrained on purpose (--random-weights)


@dataclass(frozen=True)
class ModelMetadata:
    """How to feed a model and how to read what it returns.

    Attributes:
        name: model name, e.g. ``espnet-cityscapes``.
        input_name: name of the single image input tensor (NCHW float32).
        input_width: model input width in pixels.
        input_height: model input height in pixels.
        channel_order: channel order of the input tensor.
        mean: per-channel mean in ``channel_order``, in the 0-255 range for
            ``STANDARDIZE_THEN_SCALE`` or the scaled range for ``SCALE_THEN_STANDARDIZE``.
        std: per-channel standard deviation, same conventions as ``mean``.
        scale: multiplicative factor (e.g. 1/255).
        normalize_order: where ``scale`` is applied, see ``NormalizeOrder``.
        resize_interpolation: ``bilinear`` or ``nearest`` (resize to the input size).
        resize_precision: ``float``: the frame is converted to float and then resized
            (as ESPNet's own code does; needed to match it bit for bit); ``uint8``: the
            8-bit frame is resized first, as OpenCV or PIL pipelines that train on 8-bit
            images do, which costs several times less on large frames. ``nearest``
            resizing is the same either way and always takes the 8-bit path.
        class_names: one name per class id.
        palette: one BGR colour per class id.
        ignore_index: label value meaning "no class" (painted transparent).
        outputs: the model's outputs.
        ignore_channel: logits channel that maps to ``ignore_index`` (ESPNet's 20th
            channel), or None.
        label_names: image-level labels of a classification output (e.g. scene types);
            empty for segmentation-only models. ``class_names`` name the pixels' classes.
        top_k: how many labels (with scores) a classification result reports.
    """

    name: str
    input_name: str
    input_width: int
    input_height: int
    channel_order: ChannelOrder
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float
    normalize_order: NormalizeOrder
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    outputs: tuple[OutputSpec, ...]
    ignore_index: int = 255
    ignore_channel: int | None = None
    resize_interpolation: str = "bilinear"
    resize_precision: str = "float"
    label_names: tuple[str, ...] = ()
    top_k: int = 5
    version: int = METADATA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "channel_order", ChannelOrder(self.channel_order))
        set_(self, "normalize_order", NormalizeOrder(self.normalize_order))
        set_(self, "mean", tuple(float(v) for v in self.mean))
        set_(self, "std", tuple(float(v) for v in self.std))
        set_(self, "class_names", tuple(str(n) for n in self.class_names))
        set_(self, "label_names", tuple(str(n) for n in self.label_names))
        set_(self, "palette", tuple(tuple(int(c) for c in rgb) for rgb in self.palette))
        set_(self, "outputs", tuple(o if isinstance(o, OutputSpec) else OutputSpec(**o) for o in self.outputs))
        if self.resize_precision not in RESIZE_PRECISIONS:
            raise ModelError(f"resize_precision must be one of {', '.join(RESIZE_PRECISIONS)}, "
                             f"found {self.resize_precision!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ModelError(f"mean and std need 3 values each, found {len(self.mean)} and {len(self.std)}")
        if any(s == 0 for s in self.std):
            raise ModelError(f"std must not contain 0, found {self.std}")
        if self.input_width <= 0 or self.input_height <= 0:
            raise ModelError(f"input size must be positive, found {self.input_width}x{self.input_height}")
        if len(self.palette) != len(self.class_names):
            raise ModelError(
                f"palette needs one colour per class: {len(self.class_names)} classes, {len(self.palette)} colours"
            )
        if not self.outputs:
            raise ModelError("metadata lists no outputs; expected at least one of " + ", ".join(k.value for k in OutputKind))
        classifies = any(o.kind in (OutputKind.CLASSIFICATION_LOGITS, OutputKind.CLASSIFICATION_SCORES)
                         for o in self.outputs)
        if classifies and not self.label_names:
            raise ModelError("a model with a classification output needs label_names (one per label)")
        if self.top_k < 1:
            raise ModelError(f"top_k must be at least 1, found {self.top_k}")
        if self.resize_interpolation not in ("bilinear", "nearest"):
            raise ModelError(f"resize_interpolation must be 'bilinear' or 'nearest', found {self.resize_interpolation!r}")

    @property
    def num_classes(self) -> int:
        """Number of named classes."""
        return len(self.class_names)

    @property
    def untrained_warning(self) -> str | None:
        """What to warn of on every run of a model exported untrained on purpose
        (``--random-weights``: ``extra["weights"] == "random"``), else None."""
        if self.extra.get("weights") != RANDOM_WEIGHTS:
            return None
        return (f"model {self.name} runs on random weights (--random-weights): its masks mean nothing; pass "
                f"--weights FILE with trained weights")

    @property
    def segments(self) -> bool:
        """True when the model produces a label map (class ids or segmentation logits)."""
        return any(o.kind in (OutputKind.CLASS_IDS, OutputKind.SEGMENTATION_LOGITS) for o in self.outputs)

    def output(self, kind: OutputKind) -> OutputSpec | None:
        """The first output of ``kind``, or None."""
        return next((o for o in self.outputs if o.kind is kind), None)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (``from_dict`` reads it back)."""
        data = asdict(self)
        data["channel_order"] = self.channel_order.value
        data["normalize_order"] = self.normalize_order.value
        data["outputs"] = [{"name": o.name, "kind": o.kind.value} for o in self.outputs]
        return data

    def to_json(self) -> str:
        """Serialise to a JSON string."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str | bytes) -> "ModelMetadata":
        """Parse JSON written by ``to_json``; raises ModelError on a bad document."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelError(f"model metadata is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelMetadata":
        """Build from a plain dict; raises ModelError naming missing or unknown fields."""
        if not isinstance(data, dict):
            raise ModelError(f"model metadata must be a JSON object, found {type(data).__name__}")
        version = data.get("version", METADATA_VERSION)
        if version > METADATA_VERSION:
            raise ModelError(
                f"model metadata version {version} is newer than this segstream understands "
                f"({METADATA_VERSION}); upgrade segstream"
            )
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"unknown model metadata fields {unknown}; known fields: {sorted(known)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ModelError(f"incomplete model metadata: {exc}") from exc
        except ValueError as exc:
            raise ModelError(f"invalid model metadata: {exc}") from exc

    @staticmethod
    def example() -> "ModelMetadata":
        """A small valid instance (ESPNet-like), for docs and tests."""
        return ModelMetadata(
            name="example",
            input_name="image",
            input_width=1024,
            input_height=512,
            channel_order=ChannelOrder.BGR,
            mean=(72.39, 82.91, 73.16),
            std=(45.32, 46.15, 44.91),
            scale=1 / 255,
            normalize_order=NormalizeOrder.STANDARDIZE_THEN_SCALE,
            class_names=("road", "car"),
            palette=((128, 64, 128), (142, 0, 0)),
            outputs=(OutputSpec("labels", OutputKind.CLASS_IDS),),
        )


def sidecar_path(model_path: Path) -> Path:
    """The sidecar metadata file for ``model_path`` (``model.onnx`` -> ``model.onnx.json``)."""
    return model_path.with_name(model_path.name + ".json")


def read_onnx_metadata(model_path: Path, properties: Mapping[str, str] | None = None) -> ModelMetadata:
    """Read metadata from an ONNX file's ``segstream`` property or its sidecar JSON.

    Args:
        model_path: the model file.
        properties: the file's metadata properties when the caller already has them (an
            ONNX Runtime session's ``custom_metadata_map``): the file is then not parsed
            again, and the ``onnx`` package (about a second to import) is not needed.

    Raises:
        ModelError: the file is missing, is not ONNX, or carries no segstream metadata.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ModelError(f"model file {model_path} does not exist; pass an existing .onnx file or a model name "
                         f"from `segstream models`")
    sidecar = sidecar_path(model_path)
    if sidecar.is_file():
        return ModelMetadata.from_json(sidecar.read_text())
    if model_path.suffix == ".engine":
        raise ModelError(f"TensorRT engine {model_path} has no metadata sidecar {sidecar.name}; build engines with "
                         f"`segstream build MODEL.onnx`, which writes it, or copy the sidecar along with the engine")
    if properties is None:
        properties = onnx_metadata_props(model_path)
    if METADATA_KEY in properties:
        return ModelMetadata.from_json(properties[METADATA_KEY])
    raise ModelError(
        f"{model_path} carries no segstream metadata (no '{METADATA_KEY}' metadata property and no sidecar "
        f"{sidecar.name}). Export it with `segstream export`, or write the sidecar JSON next to it "
        f"(see ModelMetadata in segstream/engines/metadata.py for the fields)"
    )


_MODEL_METADATA_PROPS = 14  # ModelProto.metadata_props (onnx.proto); its entries: key = 1, value = 2
_MAX_VARINT_BYTES = 10


def _varint(data: bytes | mmap.mmap, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    for k in range(_MAX_VARINT_BYTES):
        if pos + k >= end:
            break
        byte = data[pos + k]
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos + k + 1
    raise ValueError(f"a truncated or overlong varint at byte {pos}")


def _fields(data: bytes | mmap.mmap, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """The fields of the protobuf message in ``data[start:end]``, in order, as (field
    number, start, end) of each length-delimited value; other wire types are skipped."""
    pos = start
    while pos < end:
        key, pos = _varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(data, pos, end)
        elif wire == 2:
            length, pos = _varint(data, pos, end)
            if pos + length > end:
                raise ValueError(f"field {number} runs {pos + length - end} bytes past its end")
            yield number, pos, pos + length
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"wire type {wire} before byte {pos} (not a protobuf message)")


def onnx_metadata_props(model_path: Path) -> dict[str, str]:
    """An ONNX file's metadata properties, read straight from its protobuf encoding.

    The ``onnx`` package would parse the whole graph (and takes about a second to import,
    and its memory stays in the process): the properties are one top-level field, and the
    graph is skipped over by its length without being read.

    Raises:
        ModelError: the file is not a protobuf message such as an ONNX model.
    """
    try:
        with open(model_path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise ValueError("the file is empty")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                props: dict[str, str] = {}
                for number, begin, end in _fields(data, 0, len(data)):
                    if number == _MODEL_METADATA_PROPS:
                        entry = {n: data[a:b].decode() for n, a, b in _fields(data, begin, end)}
                        props[entry.get(1, "")] = entry.get(2, "")
                return props
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise ModelError(f"{model_path} is not a readable ONNX model ({exc})") from exc


def write_onnx_metadata(model_path: Path, metadata: ModelMetadata) -> None:
    """Store ``metadata`` in the ONNX file's ``segstream`` metadata property (in place)."""
    import onnx

    model = onnx.load(str(model_path))
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    prop = model.metadata_props.add()
    prop.key = METADATA_KEY
    prop.value = metadata.to_json()
    onnx.save(model, str(model_path))
