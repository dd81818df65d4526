"""``segstream triton-repo``: a Triton Inference Server model repository for a zoo model.

::

    REPO/NAME/config.pbtxt        dynamic batching, instance groups, segstream's metadata
                                  as the parameter ``segstream_metadata``
    REPO/NAME/1/model.onnx        the model with its normalisation in the graph: it takes
                                  uint8 BGR images at model resolution, (N, H, W, 3)
          or 1/model.plan         a TensorRT plan of that ONNX (``segstream build``)
          or 1/model.py           (``--platform python``) a Python-backend model that runs
                                  1/model.onnx with ONNX Runtime, for Triton builds without
                                  the ONNX Runtime backend

Frames then travel to the server as uint8 at model resolution (a quarter of the float
tensor's bytes) and are normalised where the model runs, as on the local GPU path.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import warnings
from enum import Enum
from pathlib import Path

from segstream.engines.metadata import ChannelOrder, ModelMetadata, OutputKind, write_onnx_metadata
from segstream.engines.models.zoo import get_model_spec
from segstream.errors import ModelError

logger = logging.getLogger(__name__)

IMAGE_INPUT = "images"
INPUT_FORMAT = "uint8_nhwc_bgr"  # what the served model takes (metadata.extra["triton_input"])
METADATA_PARAMETER = "segstream_metadata"
OPSET = 17

PYTHON_MODEL = '''"""Triton Python-backend model written by `segstream triton-repo --platform python`: runs
model.onnx (beside this file) with ONNX Runtime on the server's CPU."""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.outputs = [o["name"] for o in config["output"]]
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(config.get("parameters", {}).get("ort_threads", {}).get("string_value", 1))
        model = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "images").as_numpy()
            values = self.session.run(self.outputs, {"images": np.ascontiguousarray(images)})
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor(name, value) for name, value in zip(self.outputs, values)]))
        return responses
'''


class Platform(str, Enum):
    """How Triton runs the model."""

    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"
    PYTHON = "python"


def served_metadata(meta: ModelMetadata) -> ModelMetadata:
    """The metadata of the served model: the same classes and outputs, uint8 BGR images in."""
    return dataclasses.replace(meta, input_name=IMAGE_INPUT, extra={**meta.extra, "triton_input": INPUT_FORMAT})


def _image_input_module(module, meta: ModelMetadata):
    """``module`` behind the normalisation: (N, H, W, 3) uint8 BGR in."""
    import torch

    from segstream.engines.preprocess import normalization_affine

    gain, offset = normalization_affine(meta)

    class ImageInput(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module
            self.register_buffer("gain", torch.from_numpy(gain).view(1, 3, 1, 1))
            self.register_buffer("offset", torch.from_numpy(offset).view(1, 3, 1, 1))

        def forward(self, images):
            x = images.permute(0, 3, 1, 2).float()
            if meta.channel_order is ChannelOrder.RGB:
                x = x.flip(1)
            return self.inner(x * self.gain + self.offset)

    return ImageInput().eval()


def export_image_onnx(name: str, output: Path, weights: str | None = None, confidence: bool = False,
                      height: int | None = None, width: int | None = None,
                      random_weights: bool = False) -> ModelMetadata:
    """Export zoo model ``name`` with its normalisation in the graph (input ``height`` x
    ``width``, default the model's own); returns its metadata."""
    import torch

    from segstream.engines.export import inference_module

    module, meta = inference_module(name, weights, confidence, height, width, random_weights)
    wrapped = _image_input_module(module, meta)
    served = served_metadata(meta)
    dummy = torch.zeros(1, meta.input_height, meta.input_width, 3, dtype=torch.uint8)
    axes = {IMAGE_INPUT: {0: "batch"}, **{o.name: {0: "batch"} for o in meta.outputs}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(wrapped, (dummy,), str(output), input_names=[IMAGE_INPUT],
                          output_names=[o.name for o in meta.outputs], dynamic_axes=axes, opset_version=OPSET,
                          dynamo=False)
    write_onnx_metadata(output, served)
    return served


_TRITON_TYPES = {"uint8": "TYPE_UINT8", "float32": "TYPE_FP32", "int64": "TYPE_INT64"}


def _output_dims(meta: ModelMetadata, kind: OutputKind) -> tuple[list[int], str]:
    h, w = meta.input_height, meta.input_width
    if kind in (OutputKind.CLASS_IDS, OutputKind.CONFIDENCE):
        return [h, w], "TYPE_UINT8"
    if kind is OutputKind.SEGMENTATION_LOGITS:
        return [meta.num_classes + (meta.ignore_channel is not None), h, w], "TYPE_FP32"
    return [len(meta.label_names)], "TYPE_FP32"


def config_pbtxt(model: str, meta: ModelMetadata, platform: Platform, max_batch: int, instances: int,
                 gpu: bool) -> str:
    """The model's ``config.pbtxt`` (protobuf text format)."""
    backend = {Platform.ONNXRUNTIME: 'platform: "onnxruntime_onnx"', Platform.TENSORRT: 'platform: "tensorrt_plan"',
               Platform.PYTHON: 'backend: "python"'}[platform]
    outputs = []
    for out in meta.outputs:
        dims, dtype = _output_dims(meta, out.kind)
        outputs.append(f'  {{ name: "{out.name}" data_type: {dtype} dims: {dims} }}')
    escaped = json.dumps(meta.to_json())  # a quoted, escaped string: valid in the text format
    kind = "KIND_GPU" if gpu else "KIND_CPU"
    return "\n".join([
        f'name: "{model}"',
        backend,
        f"max_batch_size: {max_batch}",
        "input [",
        f'  {{ name: "{IMAGE_INPUT}" data_type: TYPE_UINT8 dims: [{meta.input_height}, {meta.input_width}, 3] }}',
        "]",
        "output [",
        ",\n".join(outputs),
        "]",
        "dynamic_batching { max_queue_delay_microseconds: 2000 }",
        f"instance_group [ {{ count: {instances} kind: {kind} }} ]",
        f'parameters {{ key: "{METADATA_PARAMETER}" value: {{ string_value: {escaped} }} }}',
        "",
    ])


def write_repository(name: str, repo: str | os.PathLike[str], max_batch: int = 8, instances: int = 1,
                     platform: Platform = Platform.ONNXRUNTIME, weights: str | None = None,
                     served_name: str | None = None, confidence: bool = False, height: int | None = None,
                     width: int | None = None, random_weights: bool = False) -> Path:
    """Write the model repository entry of zoo model ``name`` under ``repo``; returns its
    folder (``repo/<served_name or name>``).

    Raises:
        ModelError: bad counts, an entry there already that is not segstream's, or a
            model without trained weights (unless ``random_weights``).
        BackendUnavailable: ``tensorrt`` without TensorRT and a GPU here.
    """
    if not 1 <= max_batch <= 64 or not 1 <= instances <= 64:
        raise ModelError(f"--max-batch and --instances take 1-64, found {max_batch} and {instances}")
    if get_model_spec(name).task == "instances":
        raise ModelError(f"{name} is an instance model (one image per call, padded detections): Triton model "
                         f"repositories are written for segmentation and classification models only; run it "
                         f"locally (--backend onnxruntime or torch)")
    from segstream.engines.export import untrained

    untrained(get_model_spec(name), weights, random_weights)  # refused before any folder is made
    platform = Platform(platform)
    served_name = served_name or name
    folder = Path(repo) / served_name
    if folder.exists() and not (folder / "config.pbtxt").is_file():
        raise ModelError(f"{folder} exists and is not a model repository entry; choose another -o or remove it")
    version = folder / "1"
    version.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        meta = export_image_onnx(name, onnx_path, weights, confidence, height, width, random_weights)
        if platform is Platform.TENSORRT:
            from segstream.engines.backends.tensorrt.builder import BuildOptions, build_engine

            plan = build_engine(onnx_path, BuildOptions(max_batch=max_batch))
            shutil.copyfile(plan, version / "model.plan")
        else:
            os.replace(onnx_path, version / "model.onnx")
    if platform is Platform.PYTHON:
        (version / "model.py").write_text(PYTHON_MODEL)
    (folder / "config.pbtxt").write_text(config_pbtxt(served_name, meta, platform, max_batch, instances,
                                                      gpu=platform is Platform.TENSORRT))
    logger.info("wrote %s (%s, max batch %d, %d instance(s))", folder, platform.value, max_batch, instances)
    return folder
