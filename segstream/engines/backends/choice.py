"""Which backend runs a model here: ``--backend tensorrt|onnxruntime|torch|auto``.

``auto`` picks, in order: TensorRT where TensorRT and a usable GPU are present; ONNX
Runtime with the CUDA provider where that provider is built in and a GPU is usable; else
ONNX Runtime on the CPU. The choice and its reason are logged. The probes never import
TensorRT (``find_spec`` and the CUDA driver only), so a CPU machine loads nothing of it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from segstream.engines.backends.cuda_probe import probe_cuda
from segstream.engines.backends.tensorrt.cache import ENGINE_SUFFIX
from segstream.engines.backends.tensorrt.versions import tensorrt_missing
from segstream.errors import BackendUnavailable, ModelError

logger = logging.getLogger(__name__)


class Backend(str, Enum):
    """The backends a run may ask for; ``auto`` picks the fastest this machine can run."""

    AUTO = "auto"
    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"
    TORCH = "torch"
    TRITON = "triton"


BACKEND_CHOICES = tuple(b.value for b in Backend)


@dataclass(frozen=True)
class BackendChoice:
    """The backend a run uses and why.

    Attributes:
        backend: ``onnxruntime``, ``tensorrt``, ``torch`` or ``triton``.
        device: ``cpu``, ``cuda``, or ``remote`` (a Triton server).
        providers: ONNX Runtime providers, in order (empty for the other backends).
        reason: one line for the log.
    """

    backend: str
    device: str
    providers: tuple[str, ...] = ()
    reason: str = ""

    @property
    def takes_images(self) -> bool:
        """The engine normalises on its device, so preprocessing only resizes."""
        return (self.device == "cuda" and self.backend in ("tensorrt", "torch")) or self.backend == "triton"


def ort_provider_missing(provider: str = "CUDAExecutionProvider") -> str | None:
    """Why ONNX Runtime cannot run a GPU ``provider`` here (None when it can)."""
    import onnxruntime as ort

    if provider not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} has no {provider} (pip install onnxruntime-gpu)"
    status = probe_cuda()
    return None if status.usable else status.reason


def ort_providers(requested: tuple[str, ...]) -> tuple[str, ...]:
    """The providers for an ONNX Runtime run: as requested, else CUDA when usable, then CPU."""
    if requested:
        return requested
    return ("CUDAExecutionProvider", "CPUExecutionProvider") if ort_provider_missing() is None else (
        "CPUExecutionProvider",)


def choose_backend(requested: str, model: str, providers: tuple[str, ...] = ()) -> BackendChoice:
    """Resolve ``--backend`` for ``model`` on this machine.

    Args:
        requested: one of ``BACKEND_CHOICES``.
        model: what the user passed to ``--model`` (a ``.engine`` file needs TensorRT).
        providers: ONNX Runtime providers the user listed (empty: automatic).

    Raises:
        BackendUnavailable: the requested backend cannot run here; the message says why.
        ModelError: an unknown backend, or a model file the backend cannot run.
    """
    if requested not in BACKEND_CHOICES:
        raise ModelError(f"unknown backend {requested!r}; choose one of {', '.join(BACKEND_CHOICES)}")
    engine_file = Path(model).suffix == ENGINE_SUFFIX
    if engine_file and requested not in ("auto", "tensorrt"):
        raise ModelError(f"{model} is a TensorRT engine; run it with --backend tensorrt (or auto)")
    if requested == "tensorrt" or engine_file:
        missing = tensorrt_missing()
        if missing:
            raise BackendUnavailable(f"--backend tensorrt: {missing}")
        return BackendChoice("tensorrt", "cuda", reason="TensorRT engine file" if engine_file else "asked for")
    if requested == "triton":
        return BackendChoice("triton", "remote", reason="asked for: a Triton Inference Server runs the model")
    if requested == "torch":
        from segstream.engines.backends.torch_engine import torch_cuda_missing

        missing = torch_cuda_missing()
        return BackendChoice("torch", "cpu" if missing else "cuda",
                             reason=f"asked for; on the CPU because {missing}" if missing else "asked for; on CUDA")
    if requested == "onnxruntime":
        chosen = ort_providers(providers)
        return BackendChoice("onnxruntime", "cpu" if chosen == ("CPUExecutionProvider",) else "cuda", chosen,
                             "asked for")
    trt_missing = tensorrt_missing()
    if trt_missing is None:
        return BackendChoice("tensorrt", "cuda", reason="TensorRT and a usable GPU are present")
    cuda_missing = ort_provider_missing()
    if cuda_missing is None:
        return BackendChoice("onnxruntime", "cuda", ("CUDAExecutionProvider", "CPUExecutionProvider"),
                             f"ONNX Runtime's CUDA provider and a GPU are present; not TensorRT: {trt_missing}")
    return BackendChoice("onnxruntime", "cpu", ("CPUExecutionProvider",),
                         f"no GPU backend usable; not TensorRT: {trt_missing}; not ONNX Runtime CUDA: {cuda_missing}")
