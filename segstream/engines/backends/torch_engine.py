"""PyTorch backend: runs a zoo model eagerly, on the CPU or on CUDA.

On CUDA the engine takes uint8 images and normalises them on the GPU, can run in fp16 and
channels_last, and can capture the forward pass once as a CUDA graph and replay it
(fixed input shape, so the per-layer launch cost disappears). Outputs are exactly the
model's ONNX export's outputs (``export.inference_module``), so the backends agree.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import numpy as np

from segstream.engines.backends.base import MAX_BATCH, input_tensor
from segstream.engines.backends.cuda_probe import probe_cuda
from segstream.engines.backends.device_io import DevicePreprocessor
from segstream.engines.metadata import ModelMetadata
from segstream.errors import BackendUnavailable, ModelError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

CUDA_GRAPH_WARMUP = 3


def torch_cuda_missing() -> str | None:
    """Why PyTorch cannot use CUDA here (None when it can). Imports torch."""
    import torch

    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return (f"PyTorch {torch.__version__} is a CPU-only build; install a CUDA build "
                f"(pip install torch --index-url https://download.pytorch.org/whl/cu128)")
    return f"PyTorch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: {probe_cuda().reason}"


class TorchEngine:
    """Runs a zoo model with PyTorch.

    Args:
        model: a zoo model name (see ``segstream models``).
        weights: weights file overriding the asset lookup.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when PyTorch can use it).
        precision: ``fp32``, or ``fp16`` (CUDA only).
        channels_last: NHWC memory format (default: on CUDA).
        cuda_graph: capture the forward pass as a CUDA graph and replay it.
        threads: intra-op threads on the CPU (0: PyTorch's default).
        confidence: also return the confidence map.
        height: input height (default: the model's own).
        width: input width (default: the model's own).
        random_weights: run a model without known weights untrained, on purpose.

    Raises:
        BackendUnavailable: CUDA asked for where PyTorch cannot use it.
        ModelError: fp16 or CUDA graphs asked for on the CPU; a model without trained
            weights, unless ``random_weights``.
    """

    def __init__(self, model: str, weights: str | os.PathLike[str] | None = None, device: str = "auto",
                 precision: str = "fp32", channels_last: bool | None = None, cuda_graph: bool = False,
                 threads: int = 0, confidence: bool = False, height: int | None = None,
                 width: int | None = None, random_weights: bool = False) -> None:
        import torch

        from segstream.engines.export import inference_module

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._device = torch.device(device)
        cuda = self._device.type == "cuda"
        if cuda and (missing := torch_cuda_missing()):
            raise BackendUnavailable(missing)
        if not cuda and (precision != "fp32" or cuda_graph):
            raise ModelError(f"--precision {precision} and CUDA graphs need the torch backend on CUDA; this engine "
                             f"runs on {self._device}")
        if precision not in ("fp32", "fp16"):
            raise ModelError(f"the torch backend runs fp32 or fp16, found {precision!r}")
        if threads and not cuda:
            torch.set_num_threads(threads)
        self._torch = torch
        module, metadata = inference_module(str(model), weights, confidence, height, width, random_weights)
        self.metadata: ModelMetadata = metadata
        self._dtype = torch.float16 if precision == "fp16" else torch.float32
        module = module.to(self._device, self._dtype)
        self._channels_last = cuda if channels_last is None else channels_last
        if self._channels_last:
            module = module.to(memory_format=torch.channels_last)
        self._module = module
        self._names = [o.name for o in self.metadata.outputs]
        self.takes_images = cuda
        self._pre = DevicePreprocessor(self.metadata, self._device, self._dtype) if cuda else None
        self._graph = None
        # any batch; a CUDA graph replays the one shape it was captured with
        self.max_batch = 1 if cuda_graph else MAX_BATCH
        if cuda_graph:
            self._capture()
        logger.info("torch %s: %s on %s, %s%s%s", torch.__version__, model, self._device, precision,
                    ", channels_last" if self._channels_last else "", ", CUDA graph" if cuda_graph else "")

    def _forward(self, x: "torch.Tensor") -> tuple["torch.Tensor", ...]:
        if self._channels_last:
            x = x.contiguous(memory_format=self._torch.channels_last)
        out = self._module(x)
        return out if isinstance(out, tuple) else (out,)

    def _capture(self) -> None:
        """Record the forward pass on a fixed input buffer as a CUDA graph."""
        torch = self._torch
        meta = self.metadata
        self._static_in = torch.zeros((1, 3, meta.input_height, meta.input_width), dtype=self._dtype,
                                      device=self._device)
        side = torch.cuda.Stream(self._device)
        side.wait_stream(torch.cuda.current_stream(self._device))
        with torch.inference_mode(), torch.cuda.stream(side):
            for _ in range(CUDA_GRAPH_WARMUP):
                self._forward(self._static_in)
        torch.cuda.current_stream(self._device).wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self._graph):
            self._static_out = self._forward(self._static_in)

    def _run(self, x: "torch.Tensor") -> dict[str, np.ndarray]:
        with self._torch.inference_mode():
            if self._graph is not None:
                self._static_in.copy_(x)
                self._graph.replay()
                outs = self._static_out
            else:
                outs = self._forward(x)
            return {name: out.cpu().numpy() for name, out in zip(self._names, outs)}

    def infer(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        """Run one preprocessed (N, 3, H, W) float32 batch; outputs as the ONNX export's."""
        return self._run(input_tensor(self._torch, tensor).to(self._device, self._dtype))

    def infer_image(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Run one BGR uint8 image at the model's input size (H, W, 3), or a batch of them
        (N, H, W, 3), normalised on the device."""
        if self._pre is None:
            raise ModelError("infer_image needs the torch backend on CUDA; on the CPU use infer(tensor)")
        if image.ndim == 3:
            return self._run(self._pre(image))
        return self._run(self._torch.cat([self._pre(one) for one in image]))

    def close(self) -> None:
        """Drop the module and any captured graph."""
        self._graph = None
        self._module = None
