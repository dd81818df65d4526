"""The TensorRT backend: runs a built engine with named I/O tensors on its own CUDA stream.

I/O lives in PyTorch CUDA tensors allocated once (again only when the input size
changes): the uint8 frame is uploaded and normalised on the GPU (``DevicePreprocessor``),
``execute_async_v3`` runs on a dedicated stream, logits (if the engine outputs logits) go
through the argmax on the GPU, and only the uint8 label map is copied back.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from segstream.engines.backends.base import ARGMAX_KEY, input_tensor
from segstream.engines.backends.device_io import DevicePreprocessor, device_labels
from segstream.engines.backends.tensorrt.cache import ENGINE_SUFFIX
from segstream.engines.backends.tensorrt.versions import Precision, import_tensorrt
from segstream.engines.metadata import ModelMetadata, OutputKind, read_onnx_metadata
from segstream.errors import ModelError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


def _torch_dtypes(trt: object) -> dict[object, object]:
    import torch

    dt = trt.DataType  # type: ignore[attr-defined]
    table = {dt.FLOAT: torch.float32, dt.HALF: torch.float16, dt.INT8: torch.int8, dt.INT32: torch.int32,
             dt.BOOL: torch.bool, dt.UINT8: torch.uint8}
    if hasattr(dt, "INT64"):
        table[dt.INT64] = torch.int64
    return table


class TensorRTEngine:
    """Runs a TensorRT engine.

    Args:
        model_path: a ``.engine`` file with its metadata sidecar, or an ONNX file with
            segstream metadata (built into the engine cache first, or found there).
        precision: for an ONNX file, the precision to build.
        threads: unused (the GPU does the work); accepted for a uniform interface.

    Raises:
        BackendUnavailable: no TensorRT or no usable GPU.
        ModelError: the engine does not load or does not match its metadata.
    """

    takes_images = True

    def __init__(self, model_path: str | Path, precision: str = "fp32", threads: int = 0) -> None:
        model_path = Path(model_path)
        trt, self.flavor = import_tensorrt()  # probes CUDA before any TensorRT object exists
        import torch

        if model_path.suffix != ENGINE_SUFFIX:
            from segstream.engines.backends.tensorrt.builder import BuildOptions, build_engine

            model_path = build_engine(model_path, BuildOptions(precision=Precision(precision)))
        self.model_path = model_path
        self.metadata: ModelMetadata = read_onnx_metadata(model_path)
        self._torch = torch
        self._device = torch.device("cuda", torch.cuda.current_device())
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(model_path.read_bytes())
        if self._engine is None:
            raise ModelError(f"TensorRT could not load {model_path}; it was built for another TensorRT version or "
                             f"GPU: rebuild it with `segstream build` on this machine")
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream(device=self._device)
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if inputs != [self.metadata.input_name]:
            raise ModelError(f"{model_path}: the engine's inputs are {inputs}; the metadata names "
                             f"{self.metadata.input_name!r}")
        self._outputs = [n for n in names if n not in inputs]
        self._dtypes = {n: _torch_dtypes(trt)[self._engine.get_tensor_dtype(n)] for n in names}
        self._buffers: dict[str, "torch.Tensor"] = {}
        self._shape: tuple[int, ...] = ()
        self._pre = DevicePreprocessor(self.metadata, self._device, self._dtypes[self.metadata.input_name])
        # the optimization profile's largest batch (frames of several sources in one call)
        self.max_batch = int(self._engine.get_tensor_profile_shape(self.metadata.input_name, 0)[2][0])
        self._logits = self.metadata.output(OutputKind.SEGMENTATION_LOGITS)
        logger.info("TensorRT %s engine %s on %s", self.flavor.version, model_path.name,
                    torch.cuda.get_device_name(self._device))

    def _bind(self, shape: tuple[int, ...]) -> None:
        """(Re)allocate I/O for an input shape and give TensorRT the addresses."""
        if shape == self._shape:
            return
        torch = self._torch
        name = self.metadata.input_name
        if not self._context.set_input_shape(name, shape):
            raise ModelError(f"input shape {shape} is outside the engine's optimization profile; rebuild with "
                             f"`segstream build --shapes MIN:OPT:MAX` covering it")
        self._buffers = {name: torch.empty(shape, dtype=self._dtypes[name], device=self._device)}
        for out in self._outputs:
            dims = tuple(self._context.get_tensor_shape(out))
            self._buffers[out] = torch.empty(dims, dtype=self._dtypes[out], device=self._device)
        for tensor_name, buffer in self._buffers.items():
            self._context.set_tensor_address(tensor_name, buffer.data_ptr())
        self._shape = shape

    def _run(self) -> dict[str, np.ndarray]:
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise ModelError(f"TensorRT failed to run {self.model_path.name}")
        with self._torch.cuda.stream(self._stream):
            host: dict[str, "torch.Tensor"] = {}
            for out in self._outputs:
                buffer = self._buffers[out]
                if self._logits is not None and out == self._logits.name:
                    host[ARGMAX_KEY] = device_labels(buffer, self.metadata).to("cpu", non_blocking=True)
                else:
                    host[out] = buffer.to("cpu", non_blocking=True)
        self._stream.synchronize()
        return {name: tensor.numpy() for name, tensor in host.items()}

    def infer(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        """Run one preprocessed (N, 3, H, W) float32 batch (N up to ``max_batch``)."""
        self._bind(tuple(tensor.shape))
        with self._torch.cuda.stream(self._stream):
            self._buffers[self.metadata.input_name].copy_(input_tensor(self._torch, tensor), non_blocking=False)
        return self._run()

    def infer_image(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Run one BGR uint8 image at the model's input size (H, W, 3), or a batch of them
        (N, H, W, 3), normalised on the GPU."""
        images = image[None] if image.ndim == 3 else image
        self._bind((len(images), 3, self.metadata.input_height, self.metadata.input_width))
        buffer = self._buffers[self.metadata.input_name]
        with self._torch.cuda.stream(self._stream):
            for k, one in enumerate(images):
                self._pre(one, out=buffer[k:k + 1])
        return self._run()

    def close(self) -> None:
        """Free the context, engine and buffers (in that order)."""
        self._buffers = {}
        self._context = None
        self._engine = None
        self._runtime = None
