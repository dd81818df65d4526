"""ONNX Runtime backend (CPU everywhere; other providers when installed)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from segstream.engines.backends.base import MAX_BATCH
from segstream.engines.metadata import ModelMetadata, read_onnx_metadata
from segstream.errors import ModelError

logger = logging.getLogger(__name__)


# Short names users type -> ONNX Runtime provider names.
PROVIDER_NAMES = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
                  "cpu": "CPUExecutionProvider"}


def provider_options(provider: str, precision: str = "fp32", device_id: int = 0) -> dict[str, object]:
    """Options passed through to a provider: device, and for the TensorRT provider its
    engine and timing caches (next to segstream's own engine cache) and fp16."""
    if provider == "TensorrtExecutionProvider":
        from segstream.engines.backends.tensorrt.cache import engines_dir

        cache = str(engines_dir() / "onnxruntime-trt")
        return {"device_id": device_id, "trt_engine_cache_enable": True, "trt_engine_cache_path": cache,
                "trt_timing_cache_enable": True, "trt_timing_cache_path": cache,
                "trt_fp16_enable": precision == "fp16"}
    if provider == "CUDAExecutionProvider":
        return {"device_id": device_id}
    return {}


class OnnxRuntimeEngine:
    """Runs an ONNX model with ONNX Runtime.

    Args:
        model_path: ONNX file carrying segstream metadata (or a sidecar).
        threads: intra-op threads; 0 lets ONNX Runtime choose (one per core).
        providers: execution providers in order of preference (full names or
            ``tensorrt``/``cuda``/``cpu``); the CPU provider is always appended. Ones this
            ONNX Runtime build lacks are dropped with a warning.
        spin: let idle worker threads spin; off by default so that the other pipeline
            stages on the same cores are not starved.
        precision: ``fp16`` lets the TensorRT provider build fp16 engines.
        io_binding: bind inputs and outputs explicitly (default: when a GPU provider runs
            the model): the input is uploaded once and only the outputs, typically the
            uint8 label map, come back.

    Example:
        >>> engine = OnnxRuntimeEngine("espnet.onnx")            # doctest: +SKIP
        >>> engine.infer(tensor)["labels"].shape                  # doctest: +SKIP
        (1, 512, 1024)
    """

    takes_images = False

    def __init__(
        self,
        model_path: str | Path,
        threads: int = 0,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
        spin: bool = False,
        precision: str = "fp32",
        io_binding: bool | None = None,
    ) -> None:
        import onnxruntime as ort

        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            read_onnx_metadata(self.model_path)  # raises its clear error
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        available = set(ort.get_available_providers())
        wanted = [PROVIDER_NAMES.get(p, p) for p in providers]
        dropped = [p for p in wanted if p not in available]
        if dropped:
            logger.warning("onnxruntime %s has no %s here (available: %s); using the others", ort.__version__,
                           ", ".join(dropped), ", ".join(sorted(available)))
        chosen = [p for p in dict.fromkeys([*wanted, "CPUExecutionProvider"]) if p in available]
        try:
            self._session = ort.InferenceSession(str(self.model_path), options, providers=chosen,
                                                 provider_options=[provider_options(p, precision) for p in chosen])
        except Exception as exc:  # ONNX Runtime raises its own Fail/InvalidGraph/... kinds
            raise ModelError(f"ONNX Runtime could not load {self.model_path}: {exc}") from exc
        # The session has parsed the file already: its metadata comes from there.
        self.metadata: ModelMetadata = read_onnx_metadata(
            self.model_path, self._session.get_modelmeta().custom_metadata_map)
        inputs = [i.name for i in self._session.get_inputs()]
        if self.metadata.input_name not in inputs:
            raise ModelError(
                f"{self.model_path}: metadata names input {self.metadata.input_name!r} but the graph's inputs are "
                f"{inputs}; fix input_name in the metadata"
            )
        self._output_names = [o.name for o in self.metadata.outputs]
        batch_dim = next(i for i in self._session.get_inputs() if i.name == self.metadata.input_name).shape[0]
        # frames of several sources in one call: any number on a dynamic batch axis
        self.max_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else MAX_BATCH
        self.providers = tuple(self._session.get_providers())
        gpu = any(p != "CPUExecutionProvider" for p in self.providers)
        self._binding = None
        if gpu if io_binding is None else io_binding:
            self._binding = self._session.io_binding()
            for name in self._output_names:
                self._binding.bind_output(name, "cpu")
        logger.info("onnxruntime %s loaded %s with %s%s", ort.__version__, self.model_path.name,
                    ", ".join(self.providers), " (I/O binding)" if self._binding is not None else "")

    def infer(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        """Run one (N, 3, H, W) batch (N up to ``max_batch``); returns outputs by name."""
        if self._binding is None:
            values = self._session.run(self._output_names, {self.metadata.input_name: tensor})
        else:
            self._binding.bind_cpu_input(self.metadata.input_name, tensor)
            self._session.run_with_iobinding(self._binding)
            values = self._binding.copy_outputs_to_cpu()
        return dict(zip(self._output_names, values))

    def infer_image(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Not offered: ONNX Runtime takes preprocessed tensors (``takes_images`` is False)."""
        raise ModelError("the onnxruntime backend takes preprocessed tensors; call infer()")

    def close(self) -> None:
        """Drop the session."""
        self._binding = None
        self._session = None
