"""From what the user typed after ``--model`` and ``--backend`` to what each inference
process loads."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from segstream.engines.backends.choice import BackendChoice, choose_backend
from segstream.engines.backends.tensorrt.cache import ENGINE_SUFFIX
from segstream.engines.metadata import ModelMetadata, OutputKind, read_onnx_metadata
from segstream.engines.models.zoo import MODELS, get_model_spec
from segstream.errors import ModelError

logger = logging.getLogger(__name__)


class EnginePrecision(str, Enum):
    """Engine precision of a run (INT8 engines are built with ``segstream build --int8``)."""

    FP32 = "fp32"
    FP16 = "fp16"


PRECISIONS = tuple(p.value for p in EnginePrecision)


def resolve_model(model: str, weights: str | os.PathLike[str] | None = None,
                  confidence: bool = False, random_weights: bool = False) -> tuple[Path, ModelMetadata]:
    """An ONNX path and its metadata for a zoo name or an ONNX file.

    Zoo models are exported on first use into the cache (``segstream.engines.export``),
    with a ``confidence`` output when asked. An ONNX file asked for confidence must have one.

    Raises:
        ModelError: neither a known model name nor a readable ONNX file; a zoo model
            without trained weights, unless ``random_weights``.
    """
    if model in MODELS:
        from segstream.engines.export import cached_onnx

        path = cached_onnx(model, weights, confidence, random_weights)
        return path, read_onnx_metadata(path)
    path = Path(model).expanduser()
    if path.suffix.lower() in (".onnx", ENGINE_SUFFIX) or path.exists():
        if weights is not None:
            raise ModelError(f"--weights applies to zoo models; {path} already holds its weights")
        metadata = read_onnx_metadata(path)
        if confidence and metadata.output(OutputKind.CONFIDENCE) is None:
            raise ModelError(f"{path} has no confidence output; export it with `segstream export ... --confidence`")
        return path, metadata
    raise ModelError(f"unknown model {model!r}: not a model name ({', '.join(MODELS)}) and not an .onnx file")


@dataclass(frozen=True)
class InferenceModel:
    """What each inference process loads, and how.

    Attributes:
        path: an ONNX file, a TensorRT engine file, or a zoo name (PyTorch backend).
        metadata: the model's metadata.
        choice: the backend and device, with the reason it was chosen.
        options: keyword arguments for the backend's engine (``load_engine``).
    """

    path: str
    metadata: ModelMetadata
    choice: BackendChoice
    options: dict[str, object] = field(default_factory=dict)

    def engine_options(self, threads: int) -> dict[str, object]:
        """The engine's keyword arguments for a process with ``threads`` threads."""
        return {**self.options, "threads": threads}


def resolve_inference(model: str, weights: str | os.PathLike[str] | None = None, confidence: bool = False,
                      backend: str = "onnxruntime", precision: str = "fp32", providers: tuple[str, ...] = (),
                      cuda_graph: bool = False, triton_url: str = "", triton_shm: str = "",
                      random_weights: bool = False) -> InferenceModel:
    """Choose the backend for ``model`` and prepare it: export a zoo model to ONNX, build
    (or find cached) a TensorRT engine, check the options fit the device.

    Raises:
        BackendUnavailable: the backend asked for cannot run here.
        ModelError: the model, the backend and the options do not fit together.
    """
    choice = choose_backend(backend, model, providers)
    logger.info("backend: %s on %s", choice.backend, choice.device)
    logger.debug("backend chosen because: %s (segstream doctor checks the rest)", choice.reason)
    if precision not in PRECISIONS:
        raise ModelError(f"--precision must be one of {', '.join(PRECISIONS)}, found {precision!r} (INT8: build an "
                         f"engine with `segstream build --int8 --calib DIR` and run it with --model FILE.engine)")
    if precision != "fp32" and choice.device != "cuda":
        raise ModelError(f"--precision {precision} needs a GPU backend; {choice.backend} runs on the CPU here "
                         f"({choice.reason})")
    if cuda_graph and not (choice.backend == "torch" and choice.device == "cuda"):
        raise ModelError("--cuda-graph applies to --backend torch on a CUDA GPU")
    if choice.backend == "triton":
        from segstream.engines.backends.triton_engine import DEFAULT_URL, served_model

        url = triton_url or DEFAULT_URL
        metadata, _ = served_model(url, model)  # the server says what the model is, before any stage starts
        if confidence and metadata.output(OutputKind.CONFIDENCE) is None:
            raise ModelError(f"Triton model {model!r} has no confidence output; write its repository with "
                             f"`segstream triton-repo {model} --confidence`")
        return InferenceModel(model, metadata, choice, {"url": url, "shm": triton_shm})
    if choice.backend == "torch":
        if model not in MODELS:
            raise ModelError(f"the torch backend runs zoo models by name ({', '.join(MODELS)}); for the file "
                             f"{model} use --backend onnxruntime or tensorrt")
        from segstream.engines.export import inference_metadata, untrained

        spec = get_model_spec(model)
        metadata = inference_metadata(spec, confidence, random_weights=untrained(spec, weights, random_weights))
        options: dict[str, object] = {"weights": None if weights is None else str(weights), "device": choice.device,
                                      "precision": precision, "cuda_graph": cuda_graph, "confidence": confidence,
                                      "random_weights": random_weights}
        return InferenceModel(model, metadata, choice, options)
    path, metadata = resolve_model(model, weights, confidence, random_weights)
    if choice.backend == "tensorrt":
        if path.suffix != ENGINE_SUFFIX:
            from segstream.engines.backends.tensorrt.builder import BuildOptions, build_engine
            from segstream.engines.backends.tensorrt.versions import Precision

            path = build_engine(path, BuildOptions(precision=Precision(precision)))
        return InferenceModel(str(path), metadata, choice)
    return InferenceModel(str(path), metadata, choice, {"providers": list(choice.providers), "precision": precision})
