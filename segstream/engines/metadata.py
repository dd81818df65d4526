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
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Mapping

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


@dataclass(frozen=True)
class OutputSpec:
    """One model output: its tensor name and what it holds."""

    name: str
    kind: OutputKind

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", OutputKind(self.kind))


RESIZE_PRECISIONS = ("float", "uint8")


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
        import onnx  # lazy: only the supervisor and tools parse model files themselves

        try:
            model = onnx.load(str(model_path), load_external_data=False)
        except Exception as exc:  # onnx raises DecodeError and friends with no common base
            raise ModelError(f"{model_path} is not a readable ONNX model ({exc})") from exc
        properties = {prop.key: prop.value for prop in model.metadata_props}
    if METADATA_KEY in properties:
        return ModelMetadata.from_json(properties[METADATA_KEY])
    raise ModelError(
        f"{model_path} carries no segstream metadata (no '{METADATA_KEY}' metadata property and no sidecar "
        f"{sidecar.name}). Export it with `segstream export`, or write the sidecar JSON next to it "
        f"(see ModelMetadata in segstream/engines/metadata.py for the fields)"
    )


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
