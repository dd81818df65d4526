"""From what the user typed after ``--model`` to an ONNX file and its metadata."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from segstream.engines.metadata import ModelError, ModelMetadata, OutputKind, read_onnx_metadata
from segstream.engines.zoo import MODELS

logger = logging.getLogger(__name__)


def resolve_model(model: str, weights: str | os.PathLike[str] | None = None,
                  confidence: bool = False) -> tuple[Path, ModelMetadata]:
    """An ONNX path and its metadata for a zoo name or an ONNX file.

    Zoo models are exported on first use into the cache (``segstream.engines.export``),
    with a ``confidence`` output when asked. An ONNX file asked for confidence must have one.

    Raises:
        ModelError: neither a known model name nor a readable ONNX file.
    """
    if model in MODELS:
        from segstream.engines.export import cached_onnx

        path = cached_onnx(model, weights, confidence)
        return path, read_onnx_metadata(path)
    path = Path(model).expanduser()
    if path.suffix.lower() == ".onnx" or path.exists():
        if weights is not None:
            raise ModelError(f"--weights applies to zoo models; {path} already holds its weights")
        metadata = read_onnx_metadata(path)
        if confidence and metadata.output(OutputKind.CONFIDENCE) is None:
            raise ModelError(f"{path} has no confidence output; export it with `segstream export ... --confidence`")
        return path, metadata
    raise ModelError(f"unknown model {model!r}: not a model name ({', '.join(MODELS)}) and not an .onnx file")
