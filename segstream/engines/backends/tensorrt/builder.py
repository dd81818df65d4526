"""``segstream build``: an ONNX model with segstream metadata to a cached TensorRT engine.

Only the current API: ``build_serialized_network``, memory-pool limits, optimization
profiles, a timing cache, and a progress monitor so a long build never looks hung.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from segstream.assets import sha256_of
from segstream.engines.backends.cuda_probe import probe_cuda
from segstream.engines.backends.tensorrt.cache import (
    EngineKey,
    ShapeProfile,
    cached_engine,
    engine_path,
    key_path,
    timing_cache_path,
    write_sidecars,
)
from segstream.engines.backends.tensorrt.calibration import CalibrationBatches, make_entropy_calibrator
from segstream.engines.backends.tensorrt.versions import (
    BackendUnavailable,
    Precision,
    PrecisionPlan,
    TrtFlavor,
    import_tensorrt,
    plan_precision,
)
from segstream.engines.fp16 import convert_file_to_fp16
from segstream.engines.metadata import ModelMetadata, read_onnx_metadata, sidecar_path
from segstream.errors import ModelError

logger = logging.getLogger(__name__)

HEARTBEAT_S = 15.0


@dataclass(frozen=True)
class BuildOptions:
    """What to build.

    Attributes:
        precision: fp32, fp16 or int8.
        shapes: input sizes; None means the ONNX's own static size, or the metadata's
            input size for a dynamic ONNX.
        workspace_gb: the builder's workspace memory limit.
        max_batch: the largest batch the engine takes when the ONNX's batch axis is
            dynamic (frames of several sources in one call, ``--batch``).
        calibration_dir: folder of frames for INT8 calibration.
        output: also copy the engine (with its sidecars) here.
        rebuild: ignore a cached engine.
    """

    precision: Precision = Precision.FP32
    shapes: ShapeProfile | None = None
    workspace_gb: float = 4.0
    max_batch: int = 8
    calibration_dir: str | None = None
    output: Path | None = None
    rebuild: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", Precision(self.precision))
        if not 1 <= self.max_batch <= 64:
            raise ModelError(f"--max-batch must be 1-64 frames, found {self.max_batch}")
        if self.workspace_gb <= 0:
            raise ModelError(f"--workspace must be a positive number of GB, found {self.workspace_gb}")
        if self.precision is Precision.INT8 and not self.calibration_dir:
            raise ModelError("--int8 needs --calib DIR: a folder of frames like the ones the engine will see")


def onnx_input(onnx_path: Path) -> tuple[str, list[int | None]]:
    """The first graph input's name and dims (None where the size is dynamic)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    first = next(i for i in graph.input if i.name not in initializers)
    dims = [d.dim_value if d.HasField("dim_value") else None for d in first.type.tensor_type.shape.dim]
    return first.name, dims


def onnx_has_qdq(onnx_path: Path) -> bool:
    """True when the ONNX is already explicitly quantized (QuantizeLinear nodes)."""
    import onnx

    return any(n.op_type == "QuantizeLinear" for n in onnx.load(str(onnx_path), load_external_data=False).graph.node)


def resolve_profile(dims: list[int | None], metadata: ModelMetadata, shapes: ShapeProfile | None,
                    max_batch: int = 1) -> ShapeProfile:
    """The profile to build: the ONNX's static size, or ``shapes`` for a dynamic ONNX;
    batches up to ``max_batch`` on a dynamic batch axis, else the ONNX's fixed batch.

    Raises:
        ModelError: ``shapes`` given for a static ONNX with a different size.
    """
    batch = dims[0] if dims and isinstance(dims[0], int) and dims[0] > 0 else max_batch
    static = len(dims) == 4 and dims[2] is not None and dims[3] is not None
    if static:
        own = ShapeProfile.static(int(dims[2]), int(dims[3]))  # type: ignore[arg-type]
        if shapes is not None and (shapes.min, shapes.opt, shapes.max) != (own.min, own.opt, own.max):
            raise ModelError(f"this ONNX has a fixed input size {own.opt[0]}x{own.opt[1]}; --shapes {shapes} needs a "
                             f"dynamic export (segstream export NAME --dynamic)")
        return dataclasses.replace(own, batch=batch)
    return dataclasses.replace(shapes or ShapeProfile.static(metadata.input_height, metadata.input_width), batch=batch)


def build_engine(onnx_path: str | Path, options: BuildOptions = BuildOptions()) -> Path:
    """Build (or find in the cache) the TensorRT engine for ``onnx_path``.

    Returns:
        The engine file (``options.output`` when given, else the cache entry); its
        metadata sidecar holds the model's metadata.

    Raises:
        BackendUnavailable: no TensorRT or no usable GPU (the message says how to get them).
        ModelError: bad options for this model, or the build failed.
    """
    onnx_path = Path(onnx_path)
    metadata = read_onnx_metadata(onnx_path)
    trt, flavor = import_tensorrt()
    device = probe_cuda().devices[0]
    input_name, dims = onnx_input(onnx_path)
    profile = resolve_profile(dims, metadata, options.shapes, options.max_batch)
    plan = plan_precision(flavor, options.precision, onnx_has_qdq(onnx_path))
    batches = CalibrationBatches(options.calibration_dir, metadata) if options.calibration_dir else None
    key = EngineKey(onnx_sha256=sha256_of(onnx_path), tensorrt_version=flavor.version, gpu_name=device.name,
                    compute_capability=device.sm, precision=options.precision.value, shapes=str(profile),
                    workspace_gb=options.workspace_gb, calibration=batches.fingerprint() if batches else "")
    target = engine_path(onnx_path.stem, key)
    if cached_engine(target, key) and not options.rebuild:
        logger.info("cached TensorRT engine %s (same ONNX, TensorRT %s, %s %s, %s, %s)", target.name, flavor.version,
                    device.name, device.sm, key.precision, profile)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        logger.info("building a TensorRT %s %s engine for %s on %s (%s, shapes %s); the first build takes minutes",
                    flavor.version, key.precision, onnx_path.name, device.name, device.sm, profile)
        with tempfile.TemporaryDirectory(prefix="segstream-build-") as tmp:
            source = _precision_onnx(onnx_path, plan, batches, input_name, Path(tmp))
            blob = _build_serialized(trt, flavor, plan, source, input_name, profile, options, key, batches, target)
        tmp_engine = target.with_name(target.name + ".tmp")
        tmp_engine.write_bytes(blob)
        tmp_engine.replace(target)
        write_sidecars(target, metadata, key)
        logger.info("wrote %s (%.1f MB)", target, target.stat().st_size / 1e6)
    if options.output is None:
        return target
    output = Path(options.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    for src, dst in ((target, output), (sidecar_path(target), sidecar_path(output)), (key_path(target), key_path(output))):
        shutil.copyfile(src, dst)
    return output


def _precision_onnx(onnx_path: Path, plan: PrecisionPlan, batches: CalibrationBatches | None, input_name: str,
                    tmp: Path) -> Path:
    """The ONNX to parse: as given, converted to fp16, or with Q/DQ nodes (11.x)."""
    if plan.convert_fp16:
        return convert_file_to_fp16(onnx_path, tmp / "model-fp16.onnx")
    if plan.quantize_onnx:
        if importlib.util.find_spec("modelopt") is None:
            raise BackendUnavailable(
                "INT8 on TensorRT 11 needs an explicitly quantized (Q/DQ) ONNX: install NVIDIA ModelOpt "
                "(pip install 'nvidia-modelopt[onnx]') so segstream can quantize it with your --calib frames, or "
                "pass an ONNX that already has QuantizeLinear/DequantizeLinear nodes")
        from modelopt.onnx.quantization import quantize  # type: ignore[import-not-found]

        if batches is None:
            raise ModelError("--int8 needs --calib DIR")
        out = tmp / "model-int8-qdq.onnx"
        quantize(str(onnx_path), quantize_mode="int8", calibration_data={input_name: batches.as_array()},
                 calibration_method="entropy", output_path=str(out))
        return out
    return onnx_path


def _build_serialized(trt: ModuleType, flavor: TrtFlavor, plan: PrecisionPlan, onnx_file: Path, input_name: str,
                      profile: ShapeProfile, options: BuildOptions, key: EngineKey,
                      batches: CalibrationBatches | None, target: Path) -> bytes:
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    # 10.x: a weakly typed network, precision from builder flags; 11.x networks are always
    # strongly typed (precision comes from the ONNX types, see ``plan_precision``).
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_file)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"TensorRT could not parse {onnx_file.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * (1 << 30)))
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(input_name, *profile.dims())
    config.add_optimization_profile(opt_profile)
    if plan.calibrate and batches is not None:
        config.int8_calibrator = make_entropy_calibrator(trt, batches, target.with_suffix(".calib"))
        config.set_calibration_profile(opt_profile)
    timing_file = timing_cache_path(key)
    timing = config.create_timing_cache(timing_file.read_bytes() if timing_file.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    config.progress_monitor = make_progress_monitor(trt)
    with Heartbeat(f"building {target.name}"):
        blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise ModelError(f"TensorRT failed to build {onnx_file.name}; run with -v for TensorRT's log")
    tmp = timing_file.with_name(timing_file.name + ".tmp")
    tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    tmp.replace(timing_file)
    return bytes(blob)


def make_progress_monitor(trt: ModuleType) -> object:
    """A ``tensorrt.IProgressMonitor`` that logs each build phase and its steps."""

    class BuildProgress(trt.IProgressMonitor):  # type: ignore[name-defined, misc]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._steps: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self._steps[phase_name] = num_steps
            logger.info("build: %s%s (%d steps)", f"{parent_phase} > " if parent_phase else "", phase_name, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            total = self._steps.get(phase_name, 0)
            if total >= 10 and (step + 1) % max(1, total // 10) == 0:
                logger.info("build: %s %d/%d", phase_name, step + 1, total)
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            self._steps.pop(phase_name, None)

    return BuildProgress()


class Heartbeat:
    """Logs "still working" every ``interval_s`` while a long call runs (a context manager)."""

    def __init__(self, what: str, interval_s: float = HEARTBEAT_S) -> None:
        self.what = what
        self.interval_s = interval_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def _beat(self) -> None:
        started = time.monotonic()
        while not self._done.wait(self.interval_s):
            logger.info("%s: still working (%.0f s)", self.what, time.monotonic() - started)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=1.0)
