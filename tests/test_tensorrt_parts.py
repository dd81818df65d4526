"""The parts of the TensorRT backend that run without TensorRT or a GPU.

Version dispatch, precision plans, shape profiles, the engine cache key and sidecars,
calibration batches, the fp16 ONNX conversion (checked with ONNX Runtime), and the
builder's use of the API, driven through a strict stand-in of the 10.x and 11.x Python API
that has only the current calls (a removed call such as ``max_workspace_size`` or
``build_engine`` fails). The GPU tests are in ``test_backends.py`` and skip here.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import types
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from conftest import CITYSCAPES_FRAMES, KITTI_FRAMES, ROOT

from segstream.engines.backends.cuda_probe import probe_cuda
from segstream.engines.backends.tensorrt import builder as trt_builder
from segstream.engines.backends.tensorrt.cache import (
    EngineKey,
    ShapeProfile,
    cached_engine,
    engine_path,
    read_engine_key,
    timing_cache_path,
    write_sidecars,
)
from segstream.engines.backends.tensorrt.calibration import CalibrationBatches
from segstream.engines.backends.tensorrt.versions import Precision, PrecisionPlan, flavor_for, plan_precision
from segstream.engines.metadata import ModelMetadata, read_onnx_metadata
from segstream.engines.preprocess import Preprocessor
from segstream.errors import BackendUnavailable, ModelError

KEY = EngineKey(onnx_sha256="ab" * 32, tensorrt_version="10.9.0", gpu_name="NVIDIA H200", compute_capability="sm90",
                precision="fp16", shapes="512x1024:512x1024:512x1024", workspace_gb=4.0)


# -- version dispatch ---------------------------------------------------------------------

def test_version_dispatch():
    assert flavor_for("10.9.0.34").major == 10 and not flavor_for("10.9.0.34").strongly_typed
    assert flavor_for("11.1.0").strongly_typed
    for bad in ("8.6.1", "12.0.0", "x.y"):
        with pytest.raises(BackendUnavailable, match="10.x or 11.x|version"):
            flavor_for(bad)


@pytest.mark.parametrize("version, precision, qdq, plan", [
    ("10.9", Precision.FP32, False, PrecisionPlan()),
    ("10.9", Precision.FP16, False, PrecisionPlan(builder_flags=("FP16",))),
    ("10.9", Precision.INT8, False, PrecisionPlan(builder_flags=("INT8", "FP16"), calibrate=True)),
    ("10.9", Precision.INT8, True, PrecisionPlan(builder_flags=("INT8", "FP16"))),
    ("11.1", Precision.FP32, False, PrecisionPlan(strongly_typed=True)),
    ("11.1", Precision.FP16, False, PrecisionPlan(convert_fp16=True, strongly_typed=True)),
    ("11.1", Precision.INT8, False, PrecisionPlan(quantize_onnx=True, strongly_typed=True)),
    ("11.1", Precision.INT8, True, PrecisionPlan(strongly_typed=True)),
])
def test_precision_plans(version, precision, qdq, plan):
    assert plan_precision(flavor_for(version), precision, qdq) == plan


# -- shapes and the cache -----------------------------------------------------------------

def test_shape_profiles_parse_and_validate():
    profile = ShapeProfile.parse("256x512:512x1024:1024x2048")
    assert profile.dims() == ((1, 3, 256, 512), (1, 3, 512, 1024), (1, 3, 1024, 2048))
    assert str(profile) == "256x512:512x1024:1024x2048" and not profile.is_static
    assert ShapeProfile.parse("512x1024") == ShapeProfile.static(512, 1024)
    for bad in ("512", "1x2:3x4", "a x b", "512x1024:256x512:1024x2048", "0x10"):
        with pytest.raises(ModelError):
            ShapeProfile.parse(bad)


def test_profile_follows_the_onnx(fast_onnx):
    meta = read_onnx_metadata(fast_onnx)
    name, dims = trt_builder.onnx_input(fast_onnx)
    assert name == meta.input_name and dims == [None, 3, 128, 256]  # every export batches
    profile = trt_builder.resolve_profile(dims, meta, None, max_batch=8)
    assert profile == dataclasses.replace(ShapeProfile.static(128, 256), batch=8)
    assert profile.dims() == ((1, 3, 128, 256), (8, 3, 128, 256), (8, 3, 128, 256)) and str(profile).endswith("@b8")
    assert trt_builder.resolve_profile([1, 3, 128, 256], meta, None, max_batch=8) == ShapeProfile.static(128, 256)
    with pytest.raises(ModelError, match="--dynamic"):
        trt_builder.resolve_profile(dims, meta, ShapeProfile.parse("64x128:128x256:256x512"))
    dynamic = [1, 3, None, None]
    assert trt_builder.resolve_profile(dynamic, meta, None) == ShapeProfile.static(128, 256)
    wanted = ShapeProfile.parse("64x128:128x256:256x512")
    assert trt_builder.resolve_profile(dynamic, meta, wanted) == wanted
    with pytest.raises(ModelError, match="batch"):
        ShapeProfile((1, 1), (1, 1), (1, 1), batch=0)


def test_engine_key_covers_everything_an_engine_depends_on(tmp_path):
    digests = {KEY.digest()}
    for field, value in [("onnx_sha256", "cd" * 32), ("tensorrt_version", "11.1.0"), ("gpu_name", "NVIDIA L4"),
                         ("compute_capability", "sm89"), ("precision", "fp32"), ("shapes", "256x512:256x512:256x512"),
                         ("workspace_gb", 2.0), ("calibration", "feed")]:
        digests.add(dataclasses.replace(KEY, **{field: value}).digest())
    assert len(digests) == 9
    assert KEY.digest() == dataclasses.replace(KEY).digest()  # stable
    path = engine_path("espnet", KEY, tmp_path)
    assert path.parent == tmp_path and path.name == f"espnet-fp16-{KEY.digest()}.engine"
    # Builds on the same GPU and TensorRT version share one timing cache.
    assert timing_cache_path(KEY, tmp_path) == timing_cache_path(dataclasses.replace(KEY, precision="fp32"), tmp_path)
    assert timing_cache_path(KEY, tmp_path) != timing_cache_path(dataclasses.replace(KEY, gpu_name="L4"), tmp_path)


def test_engine_sidecars_make_the_engine_a_model_file(tmp_path):
    engine = engine_path("espnet", KEY, tmp_path)
    meta = ModelMetadata.example()
    assert not cached_engine(engine, KEY)
    engine.write_bytes(b"serialized engine")
    write_sidecars(engine, meta, KEY)
    assert cached_engine(engine, KEY)
    assert not cached_engine(engine, dataclasses.replace(KEY, tensorrt_version="10.10.0"))
    assert read_engine_key(engine) == KEY
    assert read_onnx_metadata(engine) == meta  # --model FILE.engine gets its metadata here
    bare = tmp_path / "other.engine"
    bare.write_bytes(b"x")
    with pytest.raises(ModelError, match="segstream build"):
        read_onnx_metadata(bare)


# -- calibration --------------------------------------------------------------------------

def test_calibration_batches_are_the_pipelines_preprocessing(tmp_path):
    frames = [*CITYSCAPES_FRAMES, *KITTI_FRAMES]
    for i, frame in enumerate(frames):
        shutil.copyfile(frame, tmp_path / f"frame{i + 1}.png")
    (tmp_path / "frame10.png").write_bytes(b"not a png")  # skipped and counted
    (tmp_path / "notes.txt").write_text("ignored")
    meta = dataclasses.replace(ModelMetadata.example(), input_height=128, input_width=256)
    batches = CalibrationBatches(tmp_path, meta)
    assert [p.name for p in batches.files][-2:] == [f"frame{len(frames)}.png", "frame10.png"]  # natural order
    arrays = list(batches)
    assert len(arrays) == len(frames) and batches.unreadable == 1
    np.testing.assert_array_equal(arrays[0], Preprocessor(meta)(cv2.imread(str(frames[0]))))
    assert batches.as_array().shape == (len(frames), 3, 128, 256)
    fingerprint = batches.fingerprint()
    (tmp_path / "frame11.png").write_bytes((tmp_path / "frame1.png").read_bytes())
    assert CalibrationBatches(tmp_path, meta).fingerprint() != fingerprint
    assert len(CalibrationBatches(tmp_path, meta, limit=3)) == 3


def test_calibration_needs_a_folder_of_images(tmp_path):
    meta = ModelMetadata.example()
    with pytest.raises(ModelError, match="not a folder"):
        CalibrationBatches(tmp_path / "missing", meta)
    with pytest.raises(ModelError, match="holds no images"):
        CalibrationBatches(tmp_path, meta)
    with pytest.raises(ModelError, match="--calib"):
        trt_builder.BuildOptions(precision="int8")


# -- fp16 ONNX for strongly typed networks ------------------------------------------------

def test_fp16_conversion_keeps_normalisation_in_fp32_and_agrees(fast_onnx, tmp_path):
    import onnxruntime as ort

    from segstream.engines.fp16 import NORMALIZATION_OPS, convert_file_to_fp16

    out = convert_file_to_fp16(fast_onnx, tmp_path / "fp16.onnx")
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    inits = {i.name: i for i in model.graph.initializer}
    norms = [n for n in model.graph.node if n.op_type in NORMALIZATION_OPS]
    assert norms, "ESPNet keeps BatchNormalization after its concatenations"
    for node in norms:
        assert all(inits[name].data_type == onnx.TensorProto.FLOAT for name in node.input[1:] if name in inits)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert inits[convs[0].input[1]].data_type == onnx.TensorProto.FLOAT16
    # Inputs, outputs and metadata unchanged: the pipeline feeds it the same tensors.
    original = onnx.load(str(fast_onnx))
    assert model.graph.input[0].type == original.graph.input[0].type
    assert [o.type for o in model.graph.output] == [o.type for o in original.graph.output]
    assert read_onnx_metadata(out) == read_onnx_metadata(fast_onnx)
    meta = read_onnx_metadata(fast_onnx)
    tensor = Preprocessor(meta)(cv2.imread(str(CITYSCAPES_FRAMES[0])))
    fp32 = ort.InferenceSession(str(fast_onnx)).run(None, {meta.input_name: tensor})[0]
    fp16 = ort.InferenceSession(str(out)).run(None, {meta.input_name: tensor})[0]
    assert (fp32 == fp16).mean() >= 0.99


# -- the builder against the 10.x and 11.x API --------------------------------------------

class _Strict:
    """Objects of the stand-in API: setting an attribute that is not in ``__slots__`` fails."""

    __slots__: tuple[str, ...] = ()


def fake_tensorrt(major: int, calls: list[tuple]) -> types.SimpleNamespace:
    """The subset of the TensorRT Python API segstream uses, with only the current calls."""

    class Logger:
        WARNING = 2

        def __init__(self, severity: int) -> None:
            calls.append(("Logger", severity))

    class Config(_Strict):
        __slots__ = ("progress_monitor", "int8_calibrator") if major == 10 else ("progress_monitor",)

        def set_memory_pool_limit(self, pool, size):
            calls.append(("set_memory_pool_limit", pool, size))

        def set_flag(self, flag):
            calls.append(("set_flag", flag))

        def add_optimization_profile(self, profile):
            calls.append(("add_optimization_profile", profile.shapes))

        def create_timing_cache(self, data):
            calls.append(("create_timing_cache", bytes(data)))
            return types.SimpleNamespace(serialize=lambda: b"timing")

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(("set_timing_cache", ignore_mismatch))

        def get_timing_cache(self):
            return types.SimpleNamespace(serialize=lambda: b"timing")

    class Profile:
        def __init__(self):
            self.shapes = None

        def set_shape(self, name, mn, opt, mx):
            self.shapes = (name, mn, opt, mx)

    class Builder(_Strict):
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return types.SimpleNamespace()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("build_serialized_network",))
            return b"engine"

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            calls.append(("parse_from_file", path))
            return True

    class IProgressMonitor:
        def __init__(self):
            pass

    flags = types.SimpleNamespace(FP16="FP16", INT8="INT8") if major == 10 else types.SimpleNamespace()
    return types.SimpleNamespace(__version__=f"{major}.1.0", Logger=Logger, Builder=Builder, OnnxParser=OnnxParser,
                                 BuilderFlag=flags, MemoryPoolType=types.SimpleNamespace(WORKSPACE="WORKSPACE"),
                                 NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=5),
                                 IProgressMonitor=IProgressMonitor)


@pytest.mark.parametrize("major", [10, 11])
@pytest.mark.parametrize("precision", [Precision.FP32, Precision.FP16])
def test_builder_uses_only_the_current_api(major, precision, fast_onnx, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGSTREAM_ENGINE_CACHE", str(tmp_path))
    calls: list[tuple] = []
    trt = fake_tensorrt(major, calls)
    flavor = flavor_for(trt.__version__)
    plan = plan_precision(flavor, precision)
    options = trt_builder.BuildOptions(precision=precision, workspace_gb=2.0)
    key = dataclasses.replace(KEY, tensorrt_version=trt.__version__, precision=precision.value)
    source = trt_builder._precision_onnx(fast_onnx, plan, None, "image", tmp_path)
    blob = trt_builder._build_serialized(trt, flavor, plan, source, "image", ShapeProfile.static(128, 256), options,
                                         key, None, tmp_path / "x.engine")
    assert blob == b"engine"
    assert ("create_network", 0) in calls  # 10.x: explicit batch is the default; 11.x: always strongly typed
    assert ("set_memory_pool_limit", "WORKSPACE", 2 << 30) in calls
    assert ("add_optimization_profile", ("image", (1, 3, 128, 256), (1, 3, 128, 256), (1, 3, 128, 256))) in calls
    assert ("set_flag", "FP16") in calls if (major, precision) == (10, Precision.FP16) else not any(
        c[0] == "set_flag" for c in calls)
    parsed = Path(next(c[1] for c in calls if c[0] == "parse_from_file"))
    fp16_onnx = major == 11 and precision is Precision.FP16
    assert (parsed != fast_onnx) == fp16_onnx
    if fp16_onnx:  # 11.x: the network's precision comes from the converted ONNX
        assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in onnx.load(str(parsed)).graph.initializer)
    assert timing_cache_path(key, tmp_path).read_bytes() == b"timing"  # saved for the next build


def test_int8_on_tensorrt_11_without_modelopt_says_what_to_install(fast_onnx, tmp_path):
    import importlib.util

    if importlib.util.find_spec("modelopt") is not None:
        pytest.skip("NVIDIA ModelOpt is installed here")
    plan = plan_precision(flavor_for("11.1.0"), Precision.INT8)
    meta = read_onnx_metadata(fast_onnx)
    shutil.copyfile(CITYSCAPES_FRAMES[0], tmp_path / "a.png")
    with pytest.raises(BackendUnavailable, match="nvidia-modelopt"):
        trt_builder._precision_onnx(fast_onnx, plan, CalibrationBatches(tmp_path, meta), "image", tmp_path)


def test_no_removed_tensorrt_calls_in_the_code():
    removed = ["execute_async_v2", "execute_v2", "build_engine(", "max_workspace_size", "get_binding_",
               "binding_is_input", "num_bindings", "EXPLICIT_BATCH", "platform_has_fast_fp16"]
    sources = {p: p.read_text() for p in (ROOT / "segstream").rglob("*.py")}
    used = [(p.name, call) for p, text in sources.items() for call in removed
            if re.search(rf"\.{re.escape(call)}", text)]
    assert used == []


def test_cuda_probe_reports_why_not(caplog):
    status = probe_cuda()
    if status.usable:
        assert status.devices and status.devices[0].sm.startswith("sm")
    else:
        assert not status.devices and ("driver" in status.reason or "GPU" in status.reason)


def test_heartbeat_shows_a_long_build_is_alive(caplog):
    import time

    caplog.set_level(logging.INFO, logger="segstream.engines.backends.tensorrt.builder")
    with trt_builder.Heartbeat("building x.engine", interval_s=0.05):
        time.sleep(0.2)
    assert "building x.engine: still working" in caplog.text
