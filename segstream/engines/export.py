"""Export zoo models to ONNX files that carry their own metadata.

The exported graph ends in an argmax (and maps the model's ignore channel to the ignore
index), so it returns a uint8 label map at model resolution: 40 MB of float logits never
leave the runtime for a 1024x512 Cityscapes frame, only 0.5 MB of labels.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import warnings
from pathlib import Path

from segstream.assets import ASSETS, cache_dir, resolve_asset, sha256_of
from segstream.engines.metadata import RANDOM_WEIGHTS, ModelMetadata, OutputKind, OutputSpec, write_onnx_metadata
from segstream.engines.models.zoo import ModelSpec, get_model_spec, untrained_error
from segstream.errors import ModelError

logger = logging.getLogger(__name__)

EXPORT_VERSION = 2  # bump when the exported graph changes, to invalidate caches (2: dynamic batch)
OPSET = 17


def untrained(spec: ModelSpec, weights: str | os.PathLike[str] | None, random_weights: bool) -> bool:
    """Whether the model would run on random weights (no known asset, no ``--weights``).

    Raises:
        ModelError: it would, and ``random_weights`` does not say that is meant (the error
            says where its weights come from).
    """
    if spec.weights_asset is not None or weights is not None:
        return False
    if not random_weights:
        raise untrained_error(spec)
    return True


def load_torch_model(name: str, weights: str | os.PathLike[str] | None = None, random_weights: bool = False):
    """Build a zoo model and load its weights (``--weights`` or the asset lookup).

    Args:
        name: a zoo model name.
        weights: weights file overriding the asset lookup.
        random_weights: a model without known weights and no ``weights`` keeps its random
            initialisation (training from scratch, or an untrained run asked for on purpose);
            without it such a model is refused.

    Returns:
        ``(module, spec)`` with the module in eval mode on the CPU.

    Raises:
        ModelError: no weights for the model and ``random_weights`` not set, or weights
            that do not fit it.
    """
    import torch

    spec = get_model_spec(name)
    untrained(spec, weights, random_weights)
    module = spec.build()
    if spec.weights_asset is not None or weights is not None:
        path = resolve_asset(spec.weights_asset or "", explicit=weights)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a file that is not weights
            raise ModelError(f"cannot read weights from {path}: it is not a PyTorch weights file that loads safely "
                             f"({type(exc).__name__}). Expected a state dict saved with torch.save, or a `segstream "
                             f"train` checkpoint (.pth/.pt)") from None
        if not isinstance(state, dict):
            raise ModelError(f"{path} holds a {type(state).__name__}, not a state dict of tensors; pass weights "
                             f"saved with torch.save(model.state_dict(), ...) or a `segstream train` checkpoint")
        if "state_dict" in state:  # a `segstream train` checkpoint
            if state.get("model", name) != name:
                raise ModelError(f"{path} is a checkpoint of {state['model']!r}, not {name!r}; pass the matching "
                                 f"model name")
            state = state["state_dict"]
        if spec.task == "instances":  # torchvision's newer key names, mapped to its original layout
            from segstream.engines.models.maskrcnn.weights import segstream_keys

            state = segstream_keys(state)
        missing, unexpected = module.load_state_dict(state, strict=False)
        # batch norm's step counters are bookkeeping: frozen batch norm has none, torchvision's saves none
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise ModelError(
                f"weights {path} do not fit model {name}: missing keys {missing[:5]}, unexpected keys "
                f"{unexpected[:5]}. Pass weights saved from this architecture"
            )
    return module.eval(), spec


def _inference_head(module, spec: ModelSpec, meta: ModelMetadata, confidence: bool):
    """Wrap a zoo module so it returns exactly the exported outputs, in metadata order:
    the uint8 label map (argmax, ignore channel mapped), the optional confidence map, and
    the classification scores (softmax)."""
    import torch

    ignore_channel, ignore_index = meta.ignore_channel, meta.ignore_index
    if spec.task == "instances":  # the padded detections, as a tuple in metadata order
        from segstream.engines.models.maskrcnn.export import OUTPUTS, DetectionOutputs

        assert tuple(o.name for o in meta.outputs) == OUTPUTS
        return DetectionOutputs(module).eval()

    class InferenceHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = module

        def forward(self, image: torch.Tensor):
            out = self.net(image)
            seg, cls = spec.split_outputs(out)
            results = []
            if seg is not None:
                labels = seg.argmax(1)
                if ignore_channel is not None:
                    labels = torch.where(labels == ignore_channel, torch.full_like(labels, ignore_index), labels)
                results.append(labels.to(torch.uint8))
                if confidence:
                    score = torch.softmax(seg, 1).amax(1)
                    results.append(torch.round(score * 255.0).to(torch.uint8))
            if cls is not None:
                results.append(torch.softmax(cls, 1))
            return tuple(results) if len(results) > 1 else results[0]

    return InferenceHead().eval()


def inference_metadata(spec: ModelSpec, confidence: bool = False, height: int | None = None,
                       width: int | None = None, random_weights: bool = False) -> ModelMetadata:
    """The metadata of a zoo model's exported outputs, at an input size (no torch needed).
    A model run on random weights says so (``extra["weights"] == "random"``), so that every
    run of it warns.

    Raises:
        ModelError: an input size the model cannot take, or a model without class ids.
    """
    meta = spec.metadata
    if height or width:
        height, width = height or meta.input_height, width or meta.input_width
        if height % spec.size_multiple or width % spec.size_multiple:
            raise ModelError(f"{spec.name} needs an input size divisible by {spec.size_multiple}, found "
                             f"{width}x{height}; round it, e.g. {width // spec.size_multiple * spec.size_multiple}x"
                             f"{height // spec.size_multiple * spec.size_multiple}")
        meta = dataclasses.replace(meta, input_height=height, input_width=width)
    if confidence:
        if spec.task == "instances":
            raise ModelError(f"{spec.name} is an instance model; --confidence applies to semantic segmentation "
                             f"(its detections carry their own scores)")
        if not meta.segments:
            raise ModelError(f"{spec.name} is a classifier; --confidence applies to segmentation models")
        seg = [o for o in meta.outputs if o.kind is OutputKind.CLASS_IDS]
        rest = [o for o in meta.outputs if o.kind is not OutputKind.CLASS_IDS]
        meta = dataclasses.replace(meta, outputs=(*seg, OutputSpec("confidence", OutputKind.CONFIDENCE), *rest))
    if random_weights:
        meta = dataclasses.replace(meta, extra={**meta.extra, "weights": RANDOM_WEIGHTS})
    return meta


def inference_module(name: str, weights: str | os.PathLike[str] | None = None, confidence: bool = False,
                     height: int | None = None, width: int | None = None, random_weights: bool = False):
    """A zoo model wrapped to produce exactly its ONNX export's outputs, and their metadata.

    The PyTorch backend runs this module; ``export_onnx`` exports it.

    Returns:
        ``(module, metadata)``; the module returns the label map (and the confidence map
        when ``confidence``), the metadata describes them.

    Raises:
        ModelError: an input size the model cannot take.
    """
    module, spec = load_torch_model(name, weights, random_weights)
    meta = inference_metadata(spec, confidence, height, width, untrained(spec, weights, random_weights))
    if meta.untrained_warning:
        logger.warning("%s", meta.untrained_warning)
    return _inference_head(module, spec, meta, confidence), meta


def export_onnx(name: str, output: str | os.PathLike[str], weights: str | os.PathLike[str] | None = None,
                height: int | None = None, width: int | None = None, confidence: bool = False,
                dynamic: bool = False, random_weights: bool = False) -> Path:
    """Export zoo model ``name`` to ``output`` with its metadata embedded.

    Args:
        name: a key of ``segstream.engines.models.zoo.MODELS``.
        output: the .onnx path to write (written atomically).
        weights: weights file overriding the asset lookup.
        height: model input height (default: the model's own).
        width: model input width (default: the model's own).
        confidence: add a ``confidence`` output (the winning class's softmax probability
            x 255, uint8); it costs a softmax over every pixel.
        dynamic: input height and width are dynamic axes (the metadata's size stays the
            default the pipeline resizes to); for TensorRT profiles and other sizes. The
            batch axis is dynamic in every export.
        random_weights: export a model without known weights untrained, on purpose (its
            metadata says so); without it such a model is refused.

    Returns:
        The written path.

    Raises:
        ModelError: a model without trained weights, unless ``random_weights``.
    """
    import torch

    if dynamic and get_model_spec(name).task == "instances":
        raise ModelError(f"{name} exports for one input size (its anchors are laid out for it); leave out "
                         f"--dynamic and pass --height/--width for another size")
    wrapped, meta = inference_module(name, weights, confidence, height, width, random_weights)
    dummy = torch.zeros(1, 3, meta.input_height, meta.input_width)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=output.parent)
    os.close(fd)
    try:
        # The TorchScript exporter (dynamo=False): the torch.export-based one needs the
        # onnxscript package and gains nothing for these convolutional graphs. It warns
        # that it is deprecated; the pinned torch still ships it.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # Mask R-CNN's shapes, fixed by design
            torch.onnx.export(
                wrapped,
                (dummy,),
                tmp,
                input_names=[meta.input_name],
                output_names=[o.name for o in meta.outputs],
                dynamic_axes=None if _instances(meta) else _dynamic_axes(meta, dynamic),
                opset_version=OPSET,
                dynamo=False,
            )
        write_onnx_metadata(Path(tmp), meta)
        os.chmod(tmp, 0o644)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    logger.info("exported %s to %s", name, output)
    return output


def _instances(meta: ModelMetadata) -> bool:
    """An instance model (one image per call: no dynamic batch axis)."""
    return meta.output(OutputKind.INSTANCE_COUNT) is not None


def _dynamic_axes(meta: ModelMetadata, spatial: bool) -> dict[str, dict[int, str]]:
    """The batch axis is always dynamic (the pipeline batches frames of several sources);
    height and width are with ``spatial``."""
    axes = {meta.input_name: {0: "batch", **({2: "height", 3: "width"} if spatial else {})}}
    for out in meta.outputs:
        axes[out.name] = {0: "batch"}
        if spatial and out.kind in (OutputKind.CLASS_IDS, OutputKind.CONFIDENCE):
            axes[out.name].update({1: "height", 2: "width"})
    return axes


def cached_onnx_path(name: str, key: str, confidence: bool = False) -> Path:
    """Where the export of zoo model ``name`` with weights ``key`` lives in the cache."""
    variant = "-conf" if confidence else ""
    return cache_dir() / "models" / f"{name}-{key}{variant}-e{EXPORT_VERSION}.onnx"


def needs_weights(name: str) -> str | None:
    """The asset a zoo model still needs to be exported (None once its export is cached)."""
    spec = get_model_spec(name)
    if spec.weights_asset is None:
        return None
    cached = cached_onnx_path(name, ASSETS[spec.weights_asset].sha256[:12]).is_file()
    return None if cached else spec.weights_asset


def cached_onnx(name: str, weights: str | os.PathLike[str] | None = None, confidence: bool = False,
                random_weights: bool = False) -> Path:
    """Path of the exported ONNX for a zoo model, exporting it into the cache on first use.

    The cache key holds the weights' sha256, so other weights get their own file.

    Raises:
        ModelError: a model without trained weights, unless ``random_weights``.
    """
    spec: ModelSpec = get_model_spec(name)
    untrained(spec, weights, random_weights)
    weights_path: Path | None = None
    if weights is not None:
        weights_path = resolve_asset("", explicit=weights)
        key = sha256_of(weights_path)[:12]
    elif spec.weights_asset is not None:
        # The known checksum names the export, so a cached export needs no weights file.
        key = ASSETS[spec.weights_asset].sha256[:12]
    else:
        key = RANDOM_WEIGHTS
    target = cached_onnx_path(name, key, confidence)
    if not target.is_file():
        if weights_path is None and spec.weights_asset is not None:
            weights_path = resolve_asset(spec.weights_asset)
        logger.info("exporting %s to ONNX (first use; cached in %s)", name, target.parent)
        export_onnx(name, target, weights_path, confidence=confidence, random_weights=random_weights)
    return target
