"""TensorRT 10.x and 11.x: what differs, chosen at run time from ``tensorrt.__version__``.

- 10.x: precision by builder flags (``FP16``, ``INT8``), INT8 by an entropy calibrator.
- 11.x: the flags and calibrators are gone; every network is strongly typed, so fp16
  comes from an fp16 ONNX (``engines.fp16``) and INT8 from explicit quantization
  (Q/DQ nodes in the ONNX, e.g. from NVIDIA ModelOpt).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass
from enum import Enum
from types import ModuleType

from segstream.engines.backends.cuda_probe import probe_cuda
from segstream.errors import BackendUnavailable

logger = logging.getLogger(__name__)

SUPPORTED_MAJORS = (10, 11)
INSTALL_HINT = ("install it on a machine with an NVIDIA GPU: pip install tensorrt-cu12 (or tensorrt-cu13), which "
                "pulls the libraries from NVIDIA's index https://pypi.nvidia.com")


class Precision(str, Enum):
    """Engine precision."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


@dataclass(frozen=True)
class TrtFlavor:
    """The TensorRT release line found at run time."""

    version: str
    major: int

    @property
    def strongly_typed(self) -> bool:
        """11.x builds only strongly typed networks."""
        return self.major >= 11


@dataclass(frozen=True)
class PrecisionPlan:
    """How to get a precision out of a TensorRT release.

    Attributes:
        builder_flags: names of ``tensorrt.BuilderFlag`` members to set (10.x only).
        convert_fp16: convert the ONNX to fp16 before parsing (11.x fp16).
        calibrate: attach an INT8 entropy calibrator (10.x INT8 without Q/DQ).
        quantize_onnx: insert Q/DQ nodes into the ONNX first (11.x INT8 without Q/DQ).
        strongly_typed: parse into a strongly typed network.
    """

    builder_flags: tuple[str, ...] = ()
    convert_fp16: bool = False
    calibrate: bool = False
    quantize_onnx: bool = False
    strongly_typed: bool = False


def flavor_for(version: str) -> TrtFlavor:
    """The flavor for a ``tensorrt.__version__`` string.

    Raises:
        BackendUnavailable: a release line other than 10.x or 11.x.
    """
    try:
        major = int(version.split(".")[0])
    except ValueError:
        raise BackendUnavailable(f"cannot read the TensorRT version {version!r}; expected e.g. '10.9.0'") from None
    if major not in SUPPORTED_MAJORS:
        raise BackendUnavailable(f"TensorRT {version} is not supported; segstream needs TensorRT 10.x or 11.x "
                                 f"(pip install 'tensorrt-cu12>=10,<12')")
    return TrtFlavor(version, major)


def plan_precision(flavor: TrtFlavor, precision: Precision, onnx_has_qdq: bool = False) -> PrecisionPlan:
    """What building ``precision`` takes on ``flavor``.

    Example:
        >>> plan_precision(flavor_for("10.9.0"), Precision.FP16).builder_flags
        ('FP16',)
        >>> plan_precision(flavor_for("11.1.0"), Precision.FP16).convert_fp16
        True
    """
    if flavor.strongly_typed:
        return PrecisionPlan(convert_fp16=precision is Precision.FP16,
                             quantize_onnx=precision is Precision.INT8 and not onnx_has_qdq, strongly_typed=True)
    if precision is Precision.FP16:
        return PrecisionPlan(builder_flags=("FP16",))
    if precision is Precision.INT8:
        # FP16 too, so layers TensorRT will not run in INT8 fall back to fp16, not fp32.
        return PrecisionPlan(builder_flags=("INT8", "FP16"), calibrate=not onnx_has_qdq)
    return PrecisionPlan()


def tensorrt_missing() -> str | None:
    """Why TensorRT cannot run here (None when it can), without importing it."""
    missing = []
    if importlib.util.find_spec("tensorrt") is None:
        missing.append(f"TensorRT is not installed (no 'tensorrt' Python package); {INSTALL_HINT}")
    status = probe_cuda()
    if not status.usable:
        missing.append(f"TensorRT needs a usable NVIDIA GPU: {status.reason}")
    return ". ".join(missing) or None


def import_tensorrt() -> tuple[ModuleType, TrtFlavor]:
    """Import TensorRT once CUDA is known to work.

    Raises:
        BackendUnavailable: no GPU, no driver, no TensorRT, or an unsupported version.
    """
    missing = tensorrt_missing()
    if missing:
        raise BackendUnavailable(missing)
    try:
        trt = importlib.import_module("tensorrt")
    except (ImportError, OSError, RuntimeError) as exc:
        raise BackendUnavailable(f"the 'tensorrt' package is installed but does not load ({exc}); "
                                 f"{INSTALL_HINT}") from exc
    flavor = flavor_for(str(getattr(trt, "__version__", "unknown")))
    logger.info("TensorRT %s (%s API)", flavor.version, "strongly typed 11.x" if flavor.strongly_typed else "10.x")
    return trt, flavor
