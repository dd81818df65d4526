"""Model metadata in ONNX files, the model zoo, and run configuration."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
from conftest import run_segstream

from segstream.engines.metadata import ModelMetadata, read_onnx_metadata, sidecar_path
from segstream.engines.models.zoo import MODELS, get_model_spec
from segstream.engines.resolve import resolve_model
from segstream.errors import ConfigError, ModelError
from segstream.pipeline.config import PipelineConfig, load_config
from segstream.pipeline.wire.choices import FlowPolicy


def test_exported_onnx_carries_its_metadata(espnet_onnx):
    meta = read_onnx_metadata(espnet_onnx)
    assert meta == MODELS["espnet-cityscapes"].metadata
    assert (meta.input_width, meta.input_height, meta.channel_order.value) == (1024, 512, "BGR")
    assert meta.class_names[0] == "road" and len(meta.palette) == 19 and meta.ignore_index == 255
    graph = onnx.load(str(espnet_onnx)).graph
    assert [i.name for i in graph.input] == ["image"] and [o.name for o in graph.output] == ["labels"]


def test_metadata_json_round_trip_and_validation():
    meta = ModelMetadata.example()
    assert ModelMetadata.from_json(meta.to_json()) == meta
    data = json.loads(meta.to_json())
    data["palette"] = data["palette"][:1]
    with pytest.raises(ModelError, match="one colour per class"):
        ModelMetadata.from_dict(data)
    with pytest.raises(ModelError, match="unknown model metadata fields"):
        ModelMetadata.from_dict({**json.loads(meta.to_json()), "colour": 1})
    with pytest.raises(ModelError, match="newer than this segstream"):
        ModelMetadata.from_dict({**json.loads(meta.to_json()), "version": 99})


def test_onnx_without_metadata_is_refused_with_the_fix(tmp_path, espnet_onnx):
    model = onnx.load(str(espnet_onnx))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(ModelError, match="segstream export"):
        read_onnx_metadata(bare)
    sidecar_path(bare).write_text(ModelMetadata.example().to_json())
    assert read_onnx_metadata(bare).name == "example"


def test_resolve_model_by_name_and_by_file(tmp_path, espnet_onnx):
    path, meta = resolve_model("espnet-cityscapes")
    assert path == espnet_onnx and meta.name == "espnet-cityscapes"
    copy = tmp_path / "mine.onnx"
    shutil.copy(espnet_onnx, copy)
    assert resolve_model(str(copy))[1] == meta
    with pytest.raises(ModelError, match="unknown model 'espnet'"):
        resolve_model("espnet")


def test_unknown_zoo_name_lists_the_valid_ones():
    with pytest.raises(ModelError, match="known models: espnet-cityscapes"):
        get_model_spec("fcn-resnet999")


def test_config_from_yaml_and_flag_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("sources: [a.mp4, b.mp4]\npolicy: live\nmax_frames: 5\nstage_delay_ms: {infer: 10}\n")
    config = load_config(path)
    assert config.sources == ("a.mp4", "b.mp4") and config.policy is FlowPolicy.LIVE
    assert config.with_overrides(max_frames=9, policy=None).max_frames == 9


@pytest.mark.parametrize("text, message", [
    ("source: a.mp4\n", "use 'sources"),
    ("sourcez: [a]\n", "unknown key 'sourcez'"),
    ("policy: fast\n", r"policy: expected one of \['live', 'lossless'\]"),
    ("opacity: 2\n", "opacity must be between 0 and 1"),
    ("stage_delay_ms: {inferr: 1}\n", "unknown stages"),
    ("- a\n- b\n", "mapping of settings"),
    ("engine: {modle: unet}\n", r"unknown key engine.modle; known in engine: \['backend'"),
    ("live: {colour: red}\n", r"unknown key \['colour'\]; known: \['rtsp_transport'"),
    ("outputs: {mask_encoding: jpeg}\n", r"expected one of \['raw', 'png', 'rle'\], found 'jpeg'"),
    ("engine: {backend: cuda}\n", r"expected one of \['auto', 'onnxruntime', 'tensorrt', 'torch', 'triton'\]"),
    ("sources: {uris: a.mp4}\n", "expected a list"),
    ("telemetry: {metrics_port: 1e9}\n", "expected an integer"),
    ("flow: {ready_timeout_s: .nan}\n", "expected a finite number"),
    # a wrong type names the key as the file writes it, after the file's name
    ("outputs: {opacity: abc}\n", r"bad\.yaml: outputs\.opacity: expected a finite number, found 'abc'"),
    ("sources: {live: {stall_timeout_s: x}}\n", r"bad\.yaml: sources\.live\.stall_timeout_s: expected a finite"),
    ("max_frames: [1]\n", r"bad\.yaml: max_frames: expected an integer"),
])
def test_bad_config_values_are_named(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_shipped_configs_load():
    from conftest import ROOT

    configs = sorted((ROOT / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        assert isinstance(load_config(path), PipelineConfig)


def test_cli_models_lists_the_zoo():
    result = run_segstream("models")
    assert result.returncode == 0, result.stderr
    # 364,569 trainable parameters; the state dict adds 3,772 batch-norm statistics
    assert "espnet-cityscapes " in result.stdout and "1024x512" in result.stdout and "364,569" in result.stdout


def test_cli_export_writes_onnx_with_metadata(tmp_path):
    out = tmp_path / "espnet.onnx"
    result = run_segstream("export", "espnet-cityscapes", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert read_onnx_metadata(out).name == "espnet-cityscapes"


@pytest.mark.parametrize("args, message", [
    (["run", "--source", "/no/such/video.mp4", "--publish", ""], "not found"),
    (["run", "--model", "nope", "--publish", ""], "unknown model 'nope'"),
    (["run", "--source", "test-pattern:huge", "--publish", ""], "expected test-pattern"),
    (["export", "fcn-resnet999", "-o", "x.onnx"], "known models: espnet-cityscapes"),
    (["run", "--display", "--publish", ""], "--display needs"),
    (["run", "--rtsp-out", "http://x/y", "--publish", ""], "rtsp_out takes rtsp://"),
])
def test_cli_bad_input_exits_2_with_a_clear_message(args, message):
    result = run_segstream(*args, timeout=120)
    assert result.returncode == 2
    assert message in result.stderr


def test_metadata_is_read_from_the_protobuf_without_the_onnx_package(tmp_path, fast_onnx):
    """The supervisor and the workers read a model's metadata straight from the file's
    protobuf encoding: the same properties as onnx.load, and no onnx import (a second of
    start-up and its memory in every process)."""
    from segstream.engines.metadata import onnx_metadata_props

    model = onnx.load(str(fast_onnx))
    assert onnx_metadata_props(fast_onnx) == {p.key: p.value for p in model.metadata_props}
    prop = model.metadata_props.add()
    prop.key, prop.value = "note", "héllo"  # several entries, non-ASCII
    changed = tmp_path / "changed.onnx"
    onnx.save(model, str(changed))
    assert onnx_metadata_props(changed)["note"] == "héllo"
    data = changed.read_bytes()
    for bad in (b"", data[:7], data[: len(data) // 2], b"\x0f" * 64, b"\x0a\xff\xff\xff\xff\x0f", b"\x82" * 20):
        (tmp_path / "bad.onnx").write_bytes(bad)
        with pytest.raises(ModelError, match="is not a readable ONNX model"):
            onnx_metadata_props(tmp_path / "bad.onnx")
    code = ("import sys; from segstream.engines.resolve import resolve_inference; "
            "from segstream.engines.backends.base import load_engine; "
            f"m = resolve_inference({str(fast_onnx)!r}); load_engine(m.path, 'onnxruntime'); "
            "print('onnx' in sys.modules)")
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize("args", [
    ["run", "--model", "fcn-resnet18", "--source", "test-pattern:64x48@5", "--max-frames", "1", "--publish", "",
     "--record", "{tmp}/rec"],
    ["export", "unet", "-o", "{tmp}/never.onnx"],
    ["triton-repo", "ddrnet23-slim", "-o", "{tmp}/never-repo"],
])
def test_a_model_without_trained_weights_is_refused_with_where_they_come_from(args, tmp_path):
    result = run_segstream(*(arg.format(tmp=tmp_path) for arg in args), timeout=120)
    assert result.returncode == 2, result.stderr
    assert "has no trained weights" in result.stderr and "segstream train" in result.stderr
    assert "--random-weights" in result.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_the_mask_rcnn_refusal_names_the_coco_weights_file():
    result = run_segstream("run", "--model", "maskrcnn-r50-fpn", "--publish", "", timeout=120)
    assert result.returncode == 2
    assert "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth" in result.stderr and "--weights" in result.stderr


def test_random_weights_on_purpose_warn_on_the_run_and_in_stats(tmp_path):
    """--random-weights runs it, and says so on stderr, in the summary and in stats.json;
    the exported file carries it, so a later run of that file warns too."""
    record = tmp_path / "rec"
    result = run_segstream("run", "--model", "unet", "--random-weights", "--source", "test-pattern:64x48@5",
                           "--max-frames", "2", "--policy", "lossless", "--publish", "", "--record", str(record),
                           "--quiet", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "runs on random weights" in result.stderr
    assert "warning: model unet runs on random weights" in result.stdout
    stats = json.loads((record / "stats.json").read_text())
    assert any("random weights" in w for w in stats["warnings"])
    exported = tmp_path / "unet.onnx"
    assert run_segstream("export", "unet", "-o", str(exported), "--random-weights", "--height", "64", "--width",
                         "64", timeout=300).returncode == 0
    assert read_onnx_metadata(exported).untrained_warning


def test_a_trained_model_carries_no_warning(fast_onnx):
    assert read_onnx_metadata(fast_onnx).untrained_warning is None


def test_cli_models_says_which_run_as_they_are():
    result = run_segstream("models")
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line and not line.startswith(("name", "'"))}
    assert "pretrained" in rows["espnet-cityscapes"] and "needs --weights" in rows["fcn-resnet18"]
    assert "needs --weights" in rows["maskrcnn-r50-fpn"]


def test_run_help_is_grouped_by_purpose_with_defaults():
    result = run_segstream("run", "--help", timeout=60)
    assert result.returncode == 0
    text = result.stdout
    titles = ["sources: what is read, and how:", "model and inference:", "flow: how frames move between the stages:",
              "outputs: publishing, records, views and sinks:", "telemetry:", "control API:",
              "security: keys and tokens:"]
    positions = [text.index(f"\n{title}\n") for title in titles]
    assert positions == sorted(positions)

    def section(title: str) -> str:
        start = text.index(f"\n{title}\n")
        end = text.find("\n\n", start + 1)
        return text[start:end if end > 0 else len(text)]

    assert "--source" in section(titles[0]) and "--model" in section(titles[1]) and "--policy" in section(titles[2])
    assert "--api-token" in section(titles[-1]) and "--publish-keys" in section(titles[-1])
    flat = " ".join(text.split())
    assert "--max-restarts N restarts of one stage allowed per 10 minutes before the run fails (default: 5)" in flat
    assert "(default: tcp://127.0.0.1:5560)" in flat and "(default: espnet-cityscapes)" in flat
    assert "--no-legend the legend (class colours and names) on the overlay; --no-legend leaves it out" in flat


def test_the_readme_lists_every_config_key():
    """The README's paragraph on configs names every section and key PipelineConfig declares."""
    from conftest import ROOT

    from segstream.pipeline.config import PipelineConfig
    from segstream.pipeline.settings import documented

    readme = (ROOT / "README.md").read_text()
    paragraph = " ".join(readme[readme.index("YAML takes the sections"):readme.index("names as flat top-level")].split())
    missing = [path for path, *_ in documented(PipelineConfig) if f"`{path.rsplit('.', 1)[-1]}`" not in paragraph]
    assert not missing, missing
    for section in ("sources", "engine", "flow", "outputs", "telemetry", "control"):
        assert f"`{section}` (" in paragraph, section


@pytest.mark.parametrize("args, message", [
    (["--threads", "-1"], "threads must be between 0"),
    (["--threads", "2000"], "threads must be between 0"),
    (["--camera-fps", "-5"], "a camera frame rate takes 0"),
    (["--camera-fps", "nan"], "a camera frame rate takes 0"),
    (["--camera-size", "100000x100000"], "a camera size takes 0"),
    (["--publish", "bogus://x"], "publish takes a ZeroMQ endpoint"),
    (["--publish-lossless", "redis://127.0.0.1/x"], "for a broker use --sink"),
    (["--rate", "inf"], "frames per second above 0 and at most 10000"),
    (["--rate", "1e9"], "frames per second above 0 and at most 10000"),
])
def test_every_setting_is_checked_before_the_run(args, message):
    result = run_segstream("run", "--source", "test-pattern:64x48@5", "--max-frames", "1", "--quiet", *args,
                           timeout=120)
    assert result.returncode == 2, result.stdout[-1000:]
    assert message in result.stderr and "Traceback" not in result.stderr


def test_config_files_that_cannot_be_read_as_written_are_refused(tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text("outputs:\n  opacity: 0.3\n  opacity: 0.9\n")
    with pytest.raises(ConfigError, match=r"twice.yaml: key 'opacity' is given twice \(lines 2 and 3\)"):
        load_config(twice)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("sources: [caf\xe9.mp4]\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="is not UTF-8 text .* save it as UTF-8"):
        load_config(latin)


def test_weights_that_are_not_weights_are_refused_clearly(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(bytes(range(256)) * 8)
    result = run_segstream("export", "espnet-cityscapes", "--weights", str(garbage), "-o", str(tmp_path / "x.onnx"),
                           timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"cannot read weights from {garbage}: it is not a PyTorch weights file" in result.stderr
