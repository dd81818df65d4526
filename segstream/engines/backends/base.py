"""The inference engine contract and the backend factory.

Every backend meets this contract:

- ``Engine.metadata``: the model's ``ModelMetadata``;
- ``Engine.infer(tensor)``: an (N, 3, H, W) float32 batch in (N up to
  ``Engine.max_batch``: frames of several sources in one call), a dict of named numpy
  outputs back, shaped as the metadata's ``outputs`` describe, each with the batch first;
- ``Engine.takes_images``: True for engines that preprocess on their device; they also
  offer ``Engine.infer_image(image)``, a BGR uint8 (H, W, 3) image at the model's input
  size (or an (N, H, W, 3) batch of them) in, the same outputs back;
- ``Engine.close()``: frees the runtime; safe to call twice.

A device engine whose model outputs segmentation logits takes the argmax on the device
and returns the (1, H, W) uint8 labels under ``ARGMAX_KEY`` instead of the logits.

Backends are imported lazily by ``load_engine`` so that a CPU machine never imports a GPU
runtime.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np

from segstream.engines.metadata import ModelMetadata, OutputKind

logger = logging.getLogger(__name__)


ARGMAX_KEY = "argmax"
MAX_BATCH = 64  # the most frames an engine with a dynamic batch axis takes in one call


class Engine(Protocol):
    """A loaded model that turns input tensors into named outputs."""

    metadata: ModelMetadata
    takes_images: bool
    max_batch: int

    def infer(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        """Run the model on one NCHW float32 batch."""
        ...

    def infer_image(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Run the model on one BGR uint8 image at its input size (``takes_images`` engines)."""
        ...

    def close(self) -> None:
        """Release the runtime."""
        ...


# backend name -> "module:factory"; imported only when chosen.
BACKENDS: dict[str, str] = {
    "onnxruntime": "segstream.engines.backends.onnxruntime_engine:OnnxRuntimeEngine",
    "torch": "segstream.engines.backends.torch_engine:TorchEngine",
    "tensorrt": "segstream.engines.backends.tensorrt.runtime:TensorRTEngine",
    "triton": "segstream.engines.backends.triton_engine:TritonEngine",
}


def load_engine(model_path: str | Path, backend: str = "onnxruntime", **options: object) -> Engine:
    """Load ``model_path`` with the named backend.

    Args:
        model_path: an ONNX file (or a zoo model name for the ``torch`` backend).
        backend: a key of ``BACKENDS``.
        **options: backend-specific options (threads, providers, device).

    Raises:
        ValueError: unknown backend; the message lists the valid ones.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)} (or auto)")
    module_name, _, attr = BACKENDS[backend].partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    return factory(model_path, **options)


def labels_from_outputs(outputs: dict[str, np.ndarray], metadata: ModelMetadata) -> np.ndarray:
    """The (H, W) uint8 label map at model resolution from an engine's outputs.

    Uses the class-id output if the model has one, else takes the argmax of the
    segmentation logits (mapping the ignore channel to the ignore index).
    """
    if ARGMAX_KEY in outputs:
        return outputs[ARGMAX_KEY][0]
    ids = metadata.output(OutputKind.CLASS_IDS)
    if ids is not None:
        labels = outputs[ids.name][0]
        return labels if labels.dtype == np.uint8 else labels.astype(np.uint8)
    logits = metadata.output(OutputKind.SEGMENTATION_LOGITS)
    if logits is None:
        raise ValueError(f"model {metadata.name} has no segmentation output (outputs: {metadata.outputs})")
    labels = outputs[logits.name][0].argmax(0)
    if metadata.ignore_channel is not None:
        labels[labels == metadata.ignore_channel] = metadata.ignore_index
    return labels.astype(np.uint8)


def top_labels(outputs: dict[str, np.ndarray], metadata: ModelMetadata) -> list[dict[str, object]] | None:
    """The classification result: the ``top_k`` labels with their scores, best first
    (``[{"label": "urban", "id": 1, "score": 0.87}, ...]``), or None for a model that
    does not classify. Logits outputs go through a softmax first."""
    spec = metadata.output(OutputKind.CLASSIFICATION_SCORES) or metadata.output(OutputKind.CLASSIFICATION_LOGITS)
    if spec is None:
        return None
    scores = np.asarray(outputs[spec.name], np.float64).reshape(-1)
    if spec.kind is OutputKind.CLASSIFICATION_LOGITS:
        scores = np.exp(scores - scores.max())
        scores /= scores.sum()
    order = np.argsort(scores)[::-1][: metadata.top_k]
    return [{"label": metadata.label_names[i], "id": int(i), "score": round(float(scores[i]), 4)} for i in order]


def input_tensor(torch: object, array: np.ndarray) -> object:
    """A torch tensor over ``array`` without a copy. Stages hand engines their input where it
    lies in shared memory, read-only; engines only read it, so it is wrapped as it is
    (torch would warn about every non-writable array)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)  # type: ignore[attr-defined]
