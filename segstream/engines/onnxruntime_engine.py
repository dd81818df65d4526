"""ONNX Runtime backend (CPU everywhere; other providers when installed)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from segstream.engines.metadata import ModelError, ModelMetadata, read_onnx_metadata

logger = logging.getLogger(__name__)


class OnnxRuntimeEngine:
    """Runs an ONNX model with ONNX Runtime.

    Args:
        model_path: ONNX file carrying segstream metadata (or a sidecar).
        threads: intra-op threads; 0 lets ONNX Runtime choose (one per core).
        providers: execution providers in order of preference; default CPU.
        spin: let idle worker threads spin; off by default so that the other pipeline
            stages on the same cores are not starved.

    Example:
        >>> engine = OnnxRuntimeEngine("espnet.onnx")            # doctest: +SKIP
        >>> engine.infer(tensor)["labels"].shape                  # doctest: +SKIP
        (1, 512, 1024)
    """

    def __init__(
        self,
        model_path: str | Path,
        threads: int = 0,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
        spin: bool = False,
    ) -> None:
        import onnxruntime as ort

        self.model_path = Path(model_path)
        self.metadata: ModelMetadata = read_onnx_metadata(self.model_path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        available = set(ort.get_available_providers())
        chosen = [p for p in providers if p in available] or ["CPUExecutionProvider"]
        self._session = ort.InferenceSession(str(self.model_path), options, providers=chosen)
        inputs = [i.name for i in self._session.get_inputs()]
        if self.metadata.input_name not in inputs:
            raise ModelError(
                f"{self.model_path}: metadata names input {self.metadata.input_name!r} but the graph's inputs are "
                f"{inputs}; fix input_name in the metadata"
            )
        self._output_names = [o.name for o in self.metadata.outputs]
        logger.info("onnxruntime %s loaded %s with %s", ort.__version__, self.model_path.name, chosen)

    def infer(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch; returns outputs by name."""
        values = self._session.run(self._output_names, {self.metadata.input_name: tensor})
        return dict(zip(self._output_names, values))

    def close(self) -> None:
        """Drop the session."""
        self._session = None
