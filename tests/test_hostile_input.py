"""A real stage process fed messages that decode but do not fit: it skips and counts each,
goes on, and ends with its sources. Also: an end of stream for a source the run does not
have ends nothing."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import zmq
from conftest import ROOT

from segstream.engines.metadata import ModelMetadata
from segstream.pipeline.control import EventKind, decode_event
from segstream.pipeline.spec import PayloadChoice, PreprocessSettings, RingSpec, StageKind, StageSpec
from segstream.pipeline.wire.choices import FlowPolicy
from segstream.pipeline.wire.messages import Header, Kind, Message, Part, decode, encode, eos


def _frame(index: int, array: np.ndarray, source: str = "cam") -> list:
    header = Header(Kind.FRAME, source, index, f"{index:06d}", 1, 1,
                    parts=[Part("frame", tuple(array.shape), array.dtype.name, inline=0)])
    return encode(Message(header, [np.ascontiguousarray(array)]))


def _until_end_of_stream(sock: zmq.Socket) -> list[Message]:
    """The messages a stage sends, up to its end of stream (a minute at most)."""
    out: list[Message] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out and out[-1].header.kind is Kind.EOS):
        if sock.poll(200):
            out.append(decode(sock.recv_multipart()))
    return out


def _final_report(control: zmq.Socket):
    """The stage's final report (its DONE event)."""
    report = None
    while control.poll(1000):
        event = decode_event(control.recv())
        if event.kind is EventKind.DONE:
            report = event.report
    assert report is not None
    return report


@contextlib.contextmanager
def _stage(tmp_path: Path, spec: StageSpec, output: int) -> Iterator[tuple[zmq.Socket, ...]]:
    """A real stage process run from ``spec`` (input ``in.sock``, control ``control.sock``);
    yields the feed, a socket of type ``output`` for what it sends (not yet connected), its
    control channel and the process, and stops them all."""
    context = zmq.Context()
    feed, results, control = context.socket(zmq.PUSH), context.socket(output), context.socket(zmq.PULL)
    feed.bind(f"ipc://{tmp_path}/in.sock")
    control.bind(f"ipc://{tmp_path}/control.sock")
    path = tmp_path / "spec.json"
    path.write_text(spec.to_json())
    stage = subprocess.Popen([sys.executable, "-m", "segstream.pipeline.stage_main", str(path)], cwd=ROOT)
    try:
        yield feed, results, control, stage
    finally:
        if stage.poll() is None:
            stage.kill()
        for sock in (feed, results, control):
            sock.close(0)
        context.term()


@contextlib.contextmanager
def _preprocess_stage(tmp_path: Path, run: str, **spec_fields) -> Iterator[tuple[zmq.Socket, ...]]:
    """A real lossless preprocess stage process, fed on ``in.sock``; yields the feed, its
    results, its control channel and the process, and stops them all."""
    spec = StageSpec("preprocess", StageKind.PREPROCESS, run, FlowPolicy.LOSSLESS,
                     PreprocessSettings(ModelMetadata.example()), inputs=(f"ipc://{tmp_path}/in.sock",),
                     outputs=(f"ipc://{tmp_path}/out.sock",), control=f"ipc://{tmp_path}/control.sock",
                     payloads=PayloadChoice.INLINE, ring=RingSpec(f"segstream-{run}-preprocess", 4),
                     source_ids=("cam",), **spec_fields)
    with _stage(tmp_path, spec, zmq.PULL) as (feed, results, control, stage):
        results.connect(f"ipc://{tmp_path}/out.sock")
        yield feed, results, control, stage


def test_a_preprocess_stage_skips_what_does_not_fit_and_goes_on(tmp_path):
    with _preprocess_stage(tmp_path, "0a1b2c3d") as (feed, results, control, stage):
        good = np.full((64, 128, 3), 90, np.uint8)
        for message in (_frame(0, np.zeros(12, np.uint8)),  # 1-D
                        _frame(1, np.zeros((8, 8, 4), np.uint8)),  # 4 channels
                        _frame(2, np.zeros((0, 8, 3), np.uint8)),  # 0 rows
                        _frame(3, good.astype(np.float64)),  # float64
                        encode(eos("intruder")),  # a source this run does not have
                        _frame(4, good, source="intruder"),
                        _frame(5, good),
                        encode(eos("cam"))):
            feed.send_multipart(message)
        out = _until_end_of_stream(results)
        assert [(m.header.kind, m.header.index) for m in out] == [(Kind.TENSOR, 5), (Kind.EOS, -1)]
        assert out[0].header.part("input").shape == (1, 3, 512, 1024)
        assert stage.wait(timeout=60) == 0  # ended with its source, alive until then
        report = _final_report(control)
        assert report.skipped == {"bad_input": 4, "unknown_source": 2}
        assert report.frames_in == 5 and report.frames_out == 1


def _result(index: int, parts: dict[str, np.ndarray], meta: dict | None = None) -> list:
    arrays = list(parts.values())
    header = Header(Kind.RESULT, "cam", index, f"{index:06d}", 1, 1, meta=meta or {},
                    parts=[Part(name, tuple(a.shape), a.dtype.name, inline=k) for k, (name, a) in enumerate(parts.items())])
    return encode(Message(header, [np.ascontiguousarray(a) for a in arrays]))


@contextlib.contextmanager
def _publish_stage(tmp_path: Path, run: str, metadata: ModelMetadata) -> Iterator[tuple[zmq.Socket, ...]]:
    """A real lossless publish stage process, fed on ``in.sock``; yields the feed, a
    subscriber to what it publishes (past the subscriber's grace), its control channel and
    the process, and stops them all."""
    from segstream.pipeline.spec import PublishSettings

    publish = f"ipc://{tmp_path}/pub.sock"
    spec = StageSpec("publish", StageKind.PUBLISH, run, FlowPolicy.LOSSLESS, PublishSettings(metadata, endpoint=publish),
                     inputs=(f"ipc://{tmp_path}/in.sock",), control=f"ipc://{tmp_path}/control.sock",
                     payloads=PayloadChoice.INLINE, source_ids=("cam",))
    with _stage(tmp_path, spec, zmq.SUB) as (feed, sub, control, stage):
        sub.connect(publish)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        time.sleep(1.0)  # the subscriber's grace: the good results must reach it
        yield feed, sub, control, stage


def test_a_publish_stage_refuses_malformed_instances_and_publishes_good_ones(tmp_path):
    from segstream.engines.models.zoo import MODELS

    with _publish_stage(tmp_path, "0a1b2c3e", MODELS["maskrcnn-r18-fpn"].metadata) as (feed, sub, control, stage):
        labels = np.full((40, 60), 255, np.uint8)
        labels[5:15, 5:25] = 2
        ids = np.zeros((40, 60), np.uint16)
        ids[5:15, 5:25] = 1
        good = [{"id": 1, "class_id": 3, "label": "car", "score": 0.9, "box": [5.0, 5.0, 25.0, 15.0]}]
        for message in (_result(0, {"labels": labels, "instance_ids": ids.astype(np.uint8)}, {"instances": good}),
                        _result(1, {"instance_ids": ids}, {"instances": good}),  # no labels
                        _result(2, {"labels": labels, "instance_ids": ids[:0]}, {"instances": good}),  # 0 rows
                        _result(3, {"labels": labels, "instance_ids": ids},
                                {"instances": [{**good[0], "box": [float("nan"), 0, 1, 1]}]}),  # NaN box
                        _result(4, {"labels": labels, "instance_ids": ids}, {"instances": [{**good[0], "id": 0}]}),
                        _result(5, {"labels": labels, "instance_ids": ids}, {"instances": good}),
                        encode(eos("cam"))):
            feed.send_multipart(message)
        received = _until_end_of_stream(sub)
        assert [(m.header.kind, m.header.index) for m in received] == [(Kind.RESULT, 5), (Kind.EOS, -1)]
        result = received[0]
        assert result.header.meta["instances"] == good
        part = result.header.part("instance_ids")
        assert part.dtype == "uint16" and (np.frombuffer(result.payload[part.inline], "<u2").reshape(40, 60) == ids).all()
        assert stage.wait(timeout=60) == 0
        report = _final_report(control)
        assert report.skipped.get("bad_input") == 3, report.skipped  # wrong dtype, no labels, no rows
        assert sum(n for reason, n in report.skipped.items() if reason.startswith("malformed")) == 2, report.skipped


def test_a_publish_stage_refuses_a_full_size_that_does_not_fit_its_frame_and_sizes_masks_by_one_that_does(tmp_path):
    """A frame decoded reduced (``--reduced-decode``) says how large its image is; publish
    puts the mask at that size, and refuses (counts, goes on) a size it cannot be."""
    labels = np.zeros((16, 32), np.uint8)
    labels[:, 16:] = 7
    frame = np.zeros((30, 60, 3), np.uint8)  # the frame as decoded: a quarter of 120x240
    bad_sizes = ([120], [120, "240"], [120.0, 240], [True, 240], [float("nan"), 240], [29, 60], [120, 481],
                 [10**30, 240], [-120, 240], {"h": 120})
    with _publish_stage(tmp_path, "0a1b2c3f", ModelMetadata.example()) as (feed, sub, control, stage):
        for k, size in enumerate(bad_sizes):
            feed.send_multipart(_result(k, {"labels": labels, "frame": frame}, {"full_size": size}))
        good = len(bad_sizes)
        feed.send_multipart(_result(good, {"labels": labels, "frame": frame}, {"full_size": [120, 240]}))
        feed.send_multipart(_result(good + 1, {"labels": labels, "frame": frame}))  # not reduced: the frame's size
        feed.send_multipart(encode(eos("cam")))
        received = _until_end_of_stream(sub)
        assert [m.header.index for m in received] == [good, good + 1, -1]
        shapes = [m.header.part("mask").shape for m in received[:2]]
        assert shapes == [(120, 240), (30, 60)]
        mask = np.frombuffer(received[0].payload[received[0].header.part("mask").inline], np.uint8).reshape(120, 240)
        assert (mask[:, :120] == 0).all() and (mask[:, 120:] == 7).all()
        assert stage.wait(timeout=60) == 0
        report = _final_report(control)
        assert report.skipped.get("bad_input") == len(bad_sizes) - 1, report.skipped
        assert report.skipped.get("malformed_bad_json") == 1, report.skipped  # NaN is not JSON
        assert report.frames_out == 2


def test_a_lossless_preprocess_whose_input_is_torn_while_it_converts_frees_its_output_slot(tmp_path):
    """A restarted stage may get a frame its dead predecessor held: the supervisor released
    it upstream on the dead one's behalf, so capture may reuse its slot while preprocess
    converts it. Preprocess drops that frame (counted as overwritten) and must withdraw the
    tensor it already wrote: nobody downstream ever hears of it, and the lossless ring
    would wait for it for good (the chaos test stalled so on the restarted preprocess's
    first frame)."""
    import secrets
    import signal
    import threading

    from segstream.pipeline.runtime import StageRuntime
    from segstream.pipeline.stages.preprocess import PreprocessProcessor
    from segstream.pipeline.wire.payloads import PayloadReader
    from segstream.pipeline.wire.shm_ring import RingWriter
    from segstream.pipeline.wire.shm_segments import sweep

    run = secrets.token_hex(4)
    capture = RingWriter(f"segstream-{run}-capture-0", slots=4, readers=1, wait=False)  # free to reuse
    spec = StageSpec("preprocess", StageKind.PREPROCESS, run, FlowPolicy.LOSSLESS,
                     PreprocessSettings(ModelMetadata.example()), inputs=(f"ipc://{tmp_path}/in.sock",),
                     outputs=(f"ipc://{tmp_path}/out.sock",), payloads=PayloadChoice.SHM,
                     ring=RingSpec(f"segstream-{run}-preprocess", 2, (StageKind.INFER,)), reads={"frame": 0},
                     source_ids=("cam",))
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    runtime = StageRuntime(spec)
    processor = PreprocessProcessor(spec, runtime)
    infer = PayloadReader(0, in_order=False)
    convert = processor.preprocess
    tears = []

    def tearing(frame: np.ndarray, out: np.ndarray) -> None:
        convert(frame, out)
        if not tears:  # capture reuses every slot while the first frame is converted
            tears.extend(capture.put("frame", np.zeros((64, 128, 3), np.uint8)) for _ in range(4))

    processor.preprocess = type("Tearing", (), {"metadata": convert.metadata, "__call__": staticmethod(tearing)})()
    give_up = threading.Timer(20, lambda: setattr(runtime, "_stop", True))  # fail, not hang, if a slot stays held
    give_up.start()
    try:
        results = []
        for index in range(4):
            header = Header(Kind.FRAME, "cam", index, f"{index:06d}", 1, 1,
                            parts=[capture.put("frame", np.full((64, 128, 3), 90, np.uint8))])
            out = processor.process(Message(header, []))
            results.append(out)
            if out is not None:
                assert infer.view(out, "input") is not None
                infer.release(out, "input")
        assert results[0] is None and all(out is not None for out in results[1:]), results
        assert dict(runtime.stats.skipped) == {"overwritten": 1} and not runtime.stopping
    finally:
        give_up.cancel()
        processor.close()
        infer.close()
        capture.close()
        runtime.finish(0)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        sweep(f"segstream-{run}")


def test_a_frame_of_an_unknown_source_is_refused_and_its_slot_released(tmp_path):
    """Lossless flow over shared memory: frames of a source the run does not have are
    refused, and their slots upstream released (else the writer waits for them for good)."""
    import secrets

    from segstream.pipeline.wire.shm_ring import RingWriter
    from segstream.pipeline.wire.shm_segments import sweep

    run = secrets.token_hex(4)
    capture = RingWriter(f"segstream-{run}-capture-0", slots=2, readers=1, wait=True)
    try:
        with _preprocess_stage(tmp_path, run, reads={"frame": 0}) as (feed, results, control, stage):
            _feed_a_shared_ring(feed, capture, ("intruder", "intruder", "cam", "cam"))
            out = _until_end_of_stream(results)
            assert [(m.header.kind, m.header.index) for m in out] == \
                [(Kind.TENSOR, 2), (Kind.TENSOR, 3), (Kind.EOS, -1)]
            assert stage.wait(timeout=60) == 0
            assert _final_report(control).skipped == {"unknown_source": 2}
    finally:
        capture.close()
        sweep(f"segstream-{run}")


def _feed_a_shared_ring(feed: zmq.Socket, capture, sources: tuple[str, ...]) -> None:
    """Frames by reference into ``capture``'s lossless ring, one of each source in turn,
    then the end of ``cam``; fails if the ring stalls on a slot nobody released."""
    deadline = time.monotonic() + 30
    for index, source in enumerate(sources):
        part = capture.put("frame", np.full((64, 128, 3), 90, np.uint8), lambda: time.monotonic() > deadline)
        assert part is not None, "the ring stalled on a refused frame's slot"
        header = Header(Kind.FRAME, source, index, f"{index:06d}", 1, 1, parts=[part])
        feed.send_multipart(encode(Message(header, [])))
    feed.send_multipart(encode(eos("cam")))
