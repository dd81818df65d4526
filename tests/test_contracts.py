"""Typed contracts: stage specs, the control plane, ring readers, sinks and the settings table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from segstream.engines.metadata import ModelMetadata
from segstream.errors import ConfigError, MessageError, OutputError, SegstreamError
from segstream.pipeline.config import PipelineConfig, load_config
from segstream.pipeline.control import (
    Command,
    CommandMessage,
    EventKind,
    PipelineFigures,
    StageEvent,
    decode_command,
    decode_event,
    encode,
)
from segstream.pipeline.graph import publish_sinks, reads_of, render_sinks, ring_spec
from segstream.pipeline.settings import add_flags, documented, overrides_from_args
from segstream.pipeline.sinks import BaseSink, SinkContext, SinkResult, SinkSet, parse_sink
from segstream.pipeline.spec import CaptureSettings, PublishSettings, StageKind, StageSpec
from segstream.pipeline.telemetry.stats import StageStats
from segstream.pipeline.wire.choices import FlowPolicy
from segstream.pipeline.wire.messages import Header, Kind


def _spec() -> StageSpec:
    return StageSpec("capture-0", StageKind.CAPTURE, "abcd", FlowPolicy.LIVE,
                     CaptureSettings("test-pattern", "test-pattern", rate="native"), outputs=("ipc:///tmp/x.sock",),
                     ring=ring_spec("abcd", "capture-0", StageKind.CAPTURE, 8, set(StageKind)))


def test_every_error_has_one_root():
    import segstream.errors as errors

    kinds = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, Exception)]
    assert len(kinds) > 10 and all(issubclass(k, SegstreamError) for k in kinds)


def test_a_stage_spec_survives_json_and_refuses_wrong_types():
    spec = _spec()
    assert StageSpec.from_json(spec.to_json()) == spec
    data = json.loads(spec.to_json())
    data["settings"]["max_frames"] = "many"
    with pytest.raises(ValueError, match=r"spec.settings.max_frames: expected an integer, found 'many'"):
        StageSpec.from_json(json.dumps(data))
    data = json.loads(spec.to_json())
    data["settings"]["colour"] = 1
    with pytest.raises(ValueError, match=r"unknown key \['colour'\]; known: \['source'"):
        StageSpec.from_json(json.dumps(data))
    with pytest.raises(ValueError, match="needs PublishSettings"):
        StageSpec("publish", StageKind.PUBLISH, "abcd", FlowPolicy.LIVE, CaptureSettings("x", "x"))


def test_ring_readers_are_derived_in_one_place():
    everything = set(StageKind)
    no_render = everything - {StageKind.RENDER}
    assert ring_spec("r", "capture-0", StageKind.CAPTURE, 8, everything).readers == (StageKind.PREPROCESS,
                                                                                        StageKind.RENDER)
    assert ring_spec("r", "capture-0", StageKind.CAPTURE, 8, no_render).readers == (StageKind.PREPROCESS,)
    assert reads_of(StageKind.RENDER, everything) == {"frame": 1, "mask": 0, "instance_ids": 0}
    assert reads_of(StageKind.PREPROCESS, everything) == {"frame": 0}
    assert reads_of(StageKind.PUBLISH, no_render) == {"labels": 0, "confidence": 0, "instance_ids": 0}


def test_commands_and_events_round_trip_typed():
    figures = PipelineFigures(frames_in=10, skipped=2, stages={"infer": 12.5}, miou=0.5)
    command = decode_command(encode(CommandMessage(Command.FIGURES, figures)))
    assert command.command is Command.FIGURES and command.figures == figures
    stats = StageStats("publish")
    stats.frames_in = 3
    stats.skipped.add("superseded", "cam")
    event = decode_event(encode(StageEvent("publish", EventKind.STATS, report=stats.report())))
    assert event.kind is EventKind.STATS and event.report.frames_in == 3
    assert event.report.skipped_by_source == {"cam": {"superseded": 1}}


@pytest.mark.parametrize("raw, reason", [
    (b"stop", "bad_json"),
    (b"[1, 2]", "bad_json"),
    (b'{"version": 2, "stage": "x", "kind": "ready"}', "bad_version"),
    (b'{"version": 1, "stage": "x", "kind": "exploded"}', "bad_field"),
    (b'{"version": 1, "stage": 5, "kind": "ready"}', "bad_field"),
    (b'{"version": 1, "stage": "x", "kind": "stats", "report": {"stage": "x", "skipped": {"x": "y"}}}', "bad_field"),
    (b'{"version": 1, "stage": "x", "kind": "stats", "report": {"stage": "x", "frames_in": -4}}', "bad_field"),
    (b'{"version": 1, "stage": "x", "kind": "stats", "report": {"stage": "x", "throughput_fps": NaN}}', "bad_json"),
    # found by the fuzz suite (tests/test_fuzz.py): nesting that exhausted the stack, a boolean version
    (b"[" * 100_000, "bad_json"),
    (b'{"version": true, "stage": "x", "kind": "ready"}', "bad_version"),
    (b'{"version": 1, "stage": "x", "kind": "stats", "report": {"stage": "x", "throughput_fps": 1' + b"0" * 400
     + b"}}", "bad_field"),
    (b'{"version": 1, "stage": "x", "kind": "done", "exit_code": true}', "bad_field"),
    (b'{"version": 1, "stage": "x", "kind": "ready", "extra": 1}', "bad_field"),
])
def test_forged_events_are_refused_with_a_reason(raw, reason):
    with pytest.raises(MessageError) as caught:
        decode_event(raw)
    assert caught.value.reason == reason


def test_sink_uris_resolve_through_the_table():
    assert parse_sink("masks:out")[1] == "out"
    assert parse_sink("rtsp://127.0.0.1:8554/x")[1] == "rtsp://127.0.0.1:8554/x"
    for bad, message in (("masks:", "names no target"), ("tape:x", "unknown sink"), ("masks", "unknown sink")):
        with pytest.raises(ConfigError, match=message):
            parse_sink(bad)
    config = PipelineConfig(record="out", view="127.0.0.1:1", eval=True, sinks=("video:other",))
    assert publish_sinks(config) == ("masks:out", "classifications:out", "timings:out", "eval:")
    assert render_sinks(config) == ("video:out", "view:127.0.0.1:1", "video:other")


class _Counting(BaseSink):
    def __init__(self) -> None:
        self.opened = self.written = self.ended = 0

    def open(self, first: SinkResult) -> None:
        self.opened += 1

    def write(self, result: SinkResult) -> None:
        self.written += 1

    def end_source(self, final: SinkResult) -> None:
        self.ended += 1

    def figures(self) -> dict:
        return {"written": self.written}


class _Failing(_Counting):
    def write(self, result: SinkResult) -> None:
        raise OutputError("disk full")


def test_a_failing_sink_stops_alone():
    sinks = SinkSet((), SinkContext())
    good, bad = _Counting(), _Failing()
    sinks._sinks.update({"good": good, "bad": bad})  # as the table would have built them
    result = SinkResult(Header(Kind.RESULT, "cam", 0, "000000"), np.zeros((2, 2), np.uint8))
    for _ in range(3):
        sinks.write(result)
    sinks.end_source(SinkResult(Header(Kind.EOS, "cam")))
    sinks.close()
    assert (good.opened, good.written, good.ended) == (1, 3, 1)
    assert bad.opened == 1 and bad.ended == 0
    assert sinks.figures() == {"good": {"written": 3}, "bad": {"written": 0, "error": "disk full"}}


def test_every_setting_has_help_and_the_flags_come_from_the_declarations():
    rows = documented(PipelineConfig)
    assert all(help_text for _, _, _, help_text in rows)
    parser = argparse.ArgumentParser()
    add_flags(parser, PipelineConfig)
    args = parser.parse_args(["--source", "a.mp4", "--source", "b.mp4", "--policy", "live", "--camera-size",
                              "640x480", "--classes", "road,car", "--no-legend", "--view", "--sink", "eval:"])
    config = PipelineConfig().with_overrides(**overrides_from_args(PipelineConfig, args))
    assert config.sources == ("a.mp4", "b.mp4") and config.policy is FlowPolicy.LIVE
    assert (config.live.width, config.live.height) == (640, 480) and config.live.connect_attempts == 5
    assert config.render_classes == ("road", "car") and config.legend is False
    assert config.view == "127.0.0.1:8080" and config.sinks == ("eval:",)


def test_yaml_sections_and_flat_keys_give_the_same_config(tmp_path):
    sections = tmp_path / "sections.yaml"
    sections.write_text("sources: {uris: [a.mp4], rate: 10, live: {connect_attempts: 2}}\n"
                        "engine: {model: unet, backend: onnxruntime}\nflow: {policy: live}\n"
                        "outputs: {record: out, mask_encoding: png}\ntelemetry: {quiet: true}\n")
    flat = tmp_path / "flat.yaml"
    flat.write_text("sources: [a.mp4]\nrate: '10'\nlive: {connect_attempts: 2}\nmodel: unet\nbackend: onnxruntime\n"
                    "policy: live\nrecord: out\nmask_encoding: png\nquiet: true\n")
    assert load_config(sections) == load_config(flat)
    assert load_config(sections).live.connect_attempts == 2


def test_publish_settings_carry_the_model_metadata():
    settings = PublishSettings(ModelMetadata.example(), endpoint="tcp://127.0.0.1:1")
    spec = StageSpec("publish", StageKind.PUBLISH, "r", FlowPolicy.LOSSLESS, settings)
    assert StageSpec.from_json(spec.to_json()).settings.metadata == settings.metadata


def _plan(sources: tuple[str, ...], policy: FlowPolicy, workers: int = 1):
    from segstream.engines.backends.choice import BackendChoice
    from segstream.engines.resolve import InferenceModel
    from segstream.pipeline.graph import plan_run

    model = InferenceModel("model.onnx", ModelMetadata.example(), BackendChoice("onnxruntime", "cpu"))
    config = PipelineConfig(sources=sources, publish="", workers=workers)
    return plan_run(config, policy, "0a1b2c3d", Path("/tmp/segstream-plan"), model)


def test_lossless_runs_share_one_read_ahead_window_among_their_sources():
    """A lossless capture's ring is its read-ahead window: one window per run, shared out,
    so four sources keep about as many frames in flight as one (not four times)."""
    def capture_slots(plan) -> list[int]:
        return [s.ring.slots for s in plan.stages if s.kind is StageKind.CAPTURE]

    assert capture_slots(_plan(("a.mp4",), FlowPolicy.LOSSLESS)) == [8]  # one source cannot fill it
    assert capture_slots(_plan(("a.mp4", "b.mp4"), FlowPolicy.LOSSLESS)) == [2, 2]  # several do: what one uses
    assert capture_slots(_plan(tuple(f"{k}.mp4" for k in range(4)), FlowPolicy.LOSSLESS)) == [1] * 4
    assert capture_slots(_plan(tuple(f"{k}.mp4" for k in range(8)), FlowPolicy.LOSSLESS)) == [1] * 8
    assert capture_slots(_plan(tuple(f"{k}.mp4" for k in range(4)), FlowPolicy.LIVE)) == [32] * 4  # live: no window


def test_stages_that_drain_the_pipeline_outrank_those_that_fill_it():
    """Inference keeps full priority, and so does publish with several sources, whose
    max-rate replays yield to every other stage (else captures decoding ahead outnumber
    publish and frames wait before it); a paced capture keeps its timing."""
    from segstream.pipeline.graph import FILL_STAGE_NICE, LIGHT_STAGE_NICE

    plan = _plan(("a.mp4", "b.mp4"), FlowPolicy.LOSSLESS, workers=2)
    nice = {s.name: s.nice for s in plan.stages}
    assert nice == {"capture-0": FILL_STAGE_NICE, "capture-1": FILL_STAGE_NICE, "preprocess": LIGHT_STAGE_NICE,
                    "infer-0": 0, "infer-1": 0, "publish": 0}
    assert FILL_STAGE_NICE > LIGHT_STAGE_NICE > 0
    live = _plan(("a.mp4",), FlowPolicy.LIVE)  # live replays are paced (native rate)
    assert {s.name: s.nice for s in live.stages if s.kind is StageKind.CAPTURE} == {"capture-0": 0}
    alone = _plan(("a.mp4",), FlowPolicy.LOSSLESS)  # one replay is what the pipeline waits for: the plain order
    assert {s.name: s.nice for s in alone.stages} == {"capture-0": LIGHT_STAGE_NICE, "preprocess": LIGHT_STAGE_NICE,
                                                      "infer": 0, "publish": LIGHT_STAGE_NICE}
    preprocess = next(s for s in plan.stages if s.kind is StageKind.PREPROCESS)
    assert preprocess.ring.slots == 4  # per worker: the input it infers and the next one
    one = next(s for s in _plan(("a.mp4",), FlowPolicy.LOSSLESS, workers=1).stages if s.kind is StageKind.PREPROCESS)
    assert one.ring.slots == 2


def test_live_runs_preprocess_in_the_workers_and_every_worker_hears_every_source():
    plan = _plan(("a.mp4", "b.mp4"), FlowPolicy.LIVE, workers=2)
    kinds = [s.kind for s in plan.stages]
    assert StageKind.PREPROCESS not in kinds
    captures = [s for s in plan.stages if s.kind is StageKind.CAPTURE]
    workers = [s for s in plan.stages if s.kind is StageKind.INFER]
    assert all(len(c.outputs) == 2 for c in captures)  # one endpoint per worker: end of stream reaches both
    assert [w.inputs for w in workers] == [tuple(c.outputs[k] for c in captures) for k in range(2)]
    assert all(w.settings.preprocess for w in workers)
    lossless = _plan(("a.mp4",), FlowPolicy.LOSSLESS, workers=2)
    assert StageKind.PREPROCESS in [s.kind for s in lossless.stages]
    assert not any(s.settings.preprocess for s in lossless.stages if s.kind is StageKind.INFER)
